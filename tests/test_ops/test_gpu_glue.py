"""The fast path off CPU (the path CUDA tensors take) reads no tensor value on the host: run on
``meta`` tensors, which have no data, any host synchronisation (``.item()``, ``bool(t)``,
``.tolist()``, ``.cpu()``, boolean-mask indexing) raises. Size-dependent state is built once per
size on the host and kept on the device."""
import warnings

import pytest
import torch

from mmtransnext import TransNeXt
from mmtransnext.models.layers.position_bias import build_position_table, fold_rows
from mmtransnext.ops import dispatch, extension, load_extension
from mmtransnext.ops import pooled_attention as pa

META = torch.device('meta')


def test_a_host_sync_on_meta_tensors_raises():
    # What makes the tests below able to fail.
    t = torch.ones(3, device=META)
    for sync in (lambda: bool((t != 1).any()), lambda: t.sum().item(), lambda: t[t > 0]):
        with pytest.raises((RuntimeError, NotImplementedError)):
            sync()


@pytest.mark.parametrize('table_sizes', [None, ((10, 12), (4, 3))])  # gather; resized taps
def test_pooled_attention_glue_on_meta(table_sizes):
    size, pool = (7, 9), (3, 2)
    table = build_position_table(*(table_sizes or (size, pool)), (14, 14), META)
    grid = torch.randn(3, table.values_h.numel(), table.values_w.numel(), device=META,
                       requires_grad=True)
    q, k, v = (torch.randn(2, 3, n, 8, device=META, requires_grad=True) for n in (63, 6, 6))
    extra = torch.randn(2, 3, 63, 1, device=META, requires_grad=True)
    for chunk in (None, 2):  # the whole map (the budget of meta), many chunks
        out, mass = pa.pooled_attention(q, k, v, *fold_rows(grid, table, size, pool), extra,
                                        chunk=chunk, backend=dispatch.backend_for('auto', q))
        assert out.shape == q.shape and mass.shape == extra.shape
        grads = torch.autograd.grad(out.sum() + mass.sum(), (q, k, v, grid, extra))
        assert [g.shape for g in grads] == [t.shape for t in (q, k, v, grid, extra)]


@pytest.mark.parametrize('extrapolation', [False, True])
@pytest.mark.parametrize('impl', ['torch', 'auto', 'ext'])
def test_backbone_forward_and_backward_on_meta(extrapolation, impl, monkeypatch, request):
    if impl == 'ext':
        # As on a GPU with the compiled ops: the window ops' fake (meta) kernels stand in for
        # the CUDA ones, so this runs the glue around them that CUDA tensors take.
        assert load_extension().loaded
        monkeypatch.setattr(extension, 'unsupported_reason', lambda device_type, dtype: None)
        dispatch.reset()  # decided again, with that answer (and not kept after the test)
        request.addfinalizer(dispatch.reset)
    model = TransNeXt('micro', depths=[1, 1, 1, 1], img_size=128, pretrain_size=64,
                      is_extrapolation=extrapolation, attn_impl=impl).to(META)
    x = torch.randn(2, 3, 100, 132, device=META)
    with warnings.catch_warnings():
        # 'auto' falls back to PyTorch for meta tensors, with a warning.
        warnings.simplefilter('ignore', RuntimeWarning)
        outs = model(x)
        assert [tuple(o.shape) for o in outs] == [(2, 48, 25, 33), (2, 96, 13, 17),
                                                  (2, 192, 7, 9), (2, 384, 4, 5)]
        sum(o.sum() for o in outs).backward()
        assert all(p.grad is not None and p.grad.device == META for p in model.parameters())
        with torch.no_grad():  # inference: the CPB grid kept for reuse
            model(x)
            model(x)


def test_size_dependent_state_is_built_once_per_size_and_device():
    model = TransNeXt('micro', depths=[1, 1, 1, 1], img_size=128, pretrain_size=64)
    first = model.stage_geometry(0, (25, 33), META)
    again = model.stage_geometry(0, (25, 33), META)
    assert first.seq_length_scale is again.seq_length_scale
    assert first.padding_mask is again.padding_mask and first.padding_mask.device == META
    assert first.table is again.table and first.table.index_h.device == META
    taps = first.table.taps((25, 33), first.pool_size)
    assert taps is first.table.taps((25, 33), first.pool_size) and taps.rows_w.device == META
    assert isinstance(model.stage_geometry(3, (4, 5), META).seq_length_scale, float)
