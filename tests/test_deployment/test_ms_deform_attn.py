"""Multi-scale deformable attention for export against mmcv's (its plain-PyTorch computation,
which mmcv's CPU path runs and its kernel computes): random values, locations partly outside
the maps, uneven level sizes; exported with the level sizes as ints and as a tensor, run in
onnxruntime; and the model swap that leaves the model as it was.
"""
import pytest
import torch
from torch import nn

from mmtransnext import deployment
from mmtransnext.deployment.ms_deform_attn import (DeformableAttentionForExport,
                                                   exportable_deformable_attention,
                                                   multi_scale_deformable_attention)

from test_export import standard_ops_only

mmcv_msda = pytest.importorskip('mmcv.ops.multi_scale_deform_attn')

SIZES = [(9, 13), (5, 7), (3, 4)]  # uneven maps: odd sizes, width != height
HEADS, CHANNELS, QUERIES, POINTS = 2, 8, 11, 3


def _inputs(seed: int, sizes=SIZES):
    generator = torch.Generator().manual_seed(seed)
    values = sum(h * w for h, w in sizes)
    value = torch.randn(1, values, HEADS, CHANNELS, generator=generator)
    # locations in [-0.2, 1.2]: some samples fall outside the maps (zero padding)
    locations = torch.rand(1, QUERIES, HEADS, len(sizes), POINTS, 2, generator=generator) \
        * 1.4 - 0.2
    weights = torch.rand(1, QUERIES, HEADS, len(sizes), POINTS, generator=generator)
    return value, locations, weights


@pytest.mark.parametrize('as_tensor', [False, True])
def test_matches_mmcv_pytorch(as_tensor):
    value, locations, weights = _inputs(0)
    shapes = torch.tensor(SIZES)
    expected = mmcv_msda.multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
    actual = multi_scale_deformable_attention(value, shapes if as_tensor else SIZES,
                                              locations, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_bad_level_sizes_are_refused():
    value, locations, weights = _inputs(0)
    with pytest.raises(ValueError, match='hold'):
        multi_scale_deformable_attention(value, [(9, 13), (5, 7), (3, 5)], locations, weights)
    with pytest.raises(ValueError, match='level sizes for sampling locations'):
        multi_scale_deformable_attention(value, [(9, 13), (1, 47)], locations, weights)


class _Sampling(nn.Module):
    def forward(self, value, locations, weights, shapes=None):
        return multi_scale_deformable_attention(value, SIZES if shapes is None else shapes,
                                                locations, weights)


@pytest.mark.parametrize('as_tensor', [False, True])
def test_onnx_matches_mmcv(tmp_path, as_tensor):
    """Exported (GridSample, standard operators), onnxruntime samples what mmcv does, on inputs
    other than the export example; with the sizes a graph input, at other sizes too."""
    import onnx
    value, locations, weights = _inputs(0)
    args = (value, locations, weights) + ((torch.tensor(SIZES),) if as_tensor else ())
    # with the sizes a graph input, the value count is free too
    dynamic = ({1: torch.export.Dim.DYNAMIC}, None, None, None) if as_tensor else None
    program = torch.export.export(_Sampling(), args, dynamic_shapes=dynamic, strict=False)
    path = str(tmp_path / 'msda.onnx')
    torch.onnx.export(program, args, dynamo=True, opset_version=deployment.OPSET,
                      verbose=False).save(path)
    standard_ops_only(path)
    assert 'GridSample' in {n.op_type for n in onnx.load(path).graph.node}
    session = deployment.onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    cases = [(SIZES, 1)] + ([([(6, 10), (3, 5), (2, 3)], 2)] if as_tensor else [])
    for sizes, seed in cases:
        value, locations, weights = _inputs(seed, sizes)
        shapes = torch.tensor(sizes)
        feed = [value, locations, weights] + ([shapes] if as_tensor else [])
        actual = session.run(None, {n: t.numpy() for n, t in zip(names, feed)})[0]
        expected = mmcv_msda.multi_scale_deformable_attn_pytorch(value, shapes, locations,
                                                                 weights)
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-5, atol=1e-5)


class _Layer(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.ModuleList([mmcv_msda.MultiScaleDeformableAttention(
            embed_dims=16, num_heads=HEADS, num_levels=len(SIZES), num_points=POINTS,
            batch_first=batch_first)])


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('reference_dims', [2, 4])
def test_module_swap_matches_mmcv_module(batch_first, reference_dims):
    """Inside the block the model's mmcv modules are wrapped and compute what they do (point
    and box references, both layouts, a padding mask); afterwards the model is unchanged."""
    torch.manual_seed(0)
    layer = _Layer(batch_first).eval()
    original = layer.attn[0]
    nn.init.normal_(original.sampling_offsets.weight, std=0.5)  # offsets that vary by query
    nn.init.normal_(original.attention_weights.weight)
    values = sum(h * w for h, w in SIZES)
    query = torch.randn(1, QUERIES, 16)
    value = torch.randn(1, values, 16)
    reference = torch.rand(1, QUERIES, len(SIZES), reference_dims)
    mask = torch.zeros(1, values, dtype=torch.bool)
    mask[0, -5:] = True
    if not batch_first:
        query, value = query.transpose(0, 1), value.transpose(0, 1)
    kwargs = dict(query=query, value=value, reference_points=reference,
                  key_padding_mask=mask, level_start_index=None)
    with torch.no_grad():
        expected = original(spatial_shapes=torch.tensor(SIZES), **kwargs)
        with exportable_deformable_attention(layer) as count:
            assert count == 1 and isinstance(layer.attn[0], DeformableAttentionForExport)
            for shapes in (SIZES, torch.tensor(SIZES)):
                torch.testing.assert_close(layer.attn[0](spatial_shapes=shapes, **kwargs),
                                           expected, rtol=1e-5, atol=1e-5)
    assert layer.attn[0] is original
    with pytest.raises(RuntimeError, match='inside'):
        with exportable_deformable_attention(layer):
            raise RuntimeError('inside')
    assert layer.attn[0] is original
    with pytest.raises(TypeError, match='MultiScaleDeformableAttention'):
        DeformableAttentionForExport(nn.Linear(2, 2))
