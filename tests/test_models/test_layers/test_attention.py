import pytest
import torch

from mmtransnext.models.layers.attention import AggregatedAttention, FullAttention, StageGeometry
from mmtransnext.models.layers.position_bias import build_position_table
from mmtransnext.ops.sliding_window import window_lengths, window_padding_mask
from reference import (perturb_, reference_aggregated_attention, reference_bias,
                       reference_full_attention)

CPU = torch.device('cpu')


def _geometry(size, pool, window, pretrain, trained=None):
    table_q, table_k = trained if trained else (size, pool)
    table = build_position_table(table_q, table_k, pretrain, CPU)
    num_pool = pool[0] * pool[1]
    if window is None:
        return StageGeometry(size, pool, torch.log(torch.tensor(float(num_pool))), table,
                             trained is not None)
    scale = torch.log(window_lengths(size, window, CPU) + num_pool)
    return StageGeometry(size, pool, scale, table, trained is not None,
                         window_padding_mask(size, window, CPU))


@pytest.mark.parametrize('size,sr,window,heads,interp', [
    ((8, 8), 4, 3, 2, False),
    ((7, 11), 4, 3, 3, False),
    ((13, 9), 2, 5, 1, True),
    ((1, 1), 8, 3, 2, False),        # one token: only the window centre and one pooled key
    ((2, 3), 8, 7, 2, True),         # window larger than the map
    ((16, 12), 8, 3, 4, True),
])
def test_aggregated_attention_matches_paper_equations(size, sr, window, heads, interp):
    dim = heads * 8
    attn = perturb_(AggregatedAttention(dim, heads, window, sr)).eval()
    pool = (max(1, size[0] // sr), max(1, size[1] // sr))
    pretrain = (14, 14)
    trained = ((12, 10), (12 // sr or 1, 10 // sr or 1)) if interp else None
    x = torch.randn(2, size[0] * size[1], dim)
    with torch.no_grad():
        out = attn(x, _geometry(size, pool, window, pretrain, trained))
        bias = reference_bias(attn, size, pool, pretrain, trained)
        expected = reference_aggregated_attention(attn, x, size, pool, bias)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size,interp', [((7, 7), False), ((5, 9), True), ((1, 1), False)])
def test_full_attention_matches_paper_equations(size, interp):
    attn = perturb_(FullAttention(32, 4)).eval()
    trained = ((7, 7), (7, 7)) if interp else None
    x = torch.randn(2, size[0] * size[1], 32)
    with torch.no_grad():
        out = attn(x, _geometry(size, size, None, (7, 7), trained))
        expected = reference_full_attention(attn, x, reference_bias(attn, size, size, (7, 7),
                                                                    trained))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_attention_rejects_bad_settings():
    with pytest.raises(ValueError, match='divisible'):
        FullAttention(30, 4)
    with pytest.raises(ValueError, match='odd'):
        AggregatedAttention(32, 4, window_size=4)


@pytest.mark.parametrize('mode', ['fast', 'reference'])
def test_both_attention_modes_match_the_oracle(mode):
    size, pool = (9, 7), (2, 1)
    attn = perturb_(AggregatedAttention(24, 3, 3, 4, attention_mode=mode)).eval()
    x = torch.randn(2, 63, 24)
    trained = ((12, 10), (3, 2))
    with torch.no_grad():
        out = attn(x, _geometry(size, pool, 3, (14, 14), trained))
        expected = reference_aggregated_attention(
            attn, x, size, pool, reference_bias(attn, size, pool, (14, 14), trained))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_attention_dropout_uses_the_reference_path_in_training():
    attn = AggregatedAttention(16, 2, attn_drop=0.5)
    assert attn.use_fast_path() is False
    assert attn.eval().use_fast_path() is True
    with pytest.raises(ValueError, match='attention_mode'):
        AggregatedAttention(16, 2, attention_mode='turbo')


def test_position_bias_grid_is_reused_until_weights_change():
    attn = perturb_(AggregatedAttention(16, 2, 3, 4)).eval()
    geometry = _geometry((8, 8), (2, 2), 3, (14, 14))
    with torch.no_grad():
        first = attn.folded_bias(geometry)[0]
        grid = attn._grid_cache[1].value
        assert attn.folded_bias(geometry)[0].equal(first) and attn._grid_cache[1].value is grid
        attn.cpb_fc2.weight.add_(1.0)   # an optimizer step or a checkpoint load
        changed = attn.folded_bias(geometry)[0]
    assert attn._grid_cache[1].value is not grid and not changed.equal(first)
    folded = attn.folded_bias(geometry)[0]  # with gradients: computed, never cached
    assert folded.requires_grad and attn._grid_cache is None


@pytest.mark.parametrize('interp', [False, True])
def test_reference_mode_runs_none_of_the_fast_paths_code(monkeypatch, interp):
    """The oracle is independent: with every fast-path bias step and every compiled op made to
    fail, the reference mode still gives the tests' oracle's numbers."""
    from mmtransnext.models.layers import attention as attention_module
    from mmtransnext.models.layers import position_bias
    from mmtransnext.ops import bias_ops, cosine_attention, extension

    size, pool, window = (9, 7), (2, 1), 3
    trained = ((12, 10), (3, 2)) if interp else None
    geometry = _geometry(size, pool, window, (14, 14), trained)
    models = [perturb_(AggregatedAttention(24, 3, window, 4, attention_mode='reference')).eval(),
              perturb_(FullAttention(24, 3, attention_mode='reference')).eval()]
    full_geometry = _geometry(size, size, None, (14, 14), (((7, 7),) * 2) if interp else None)

    def forbidden(*args, **kwargs):
        raise AssertionError('the reference path ran fast-path or compiled code')

    for module, name in [(attention_module, 'fold_rows'), (attention_module, 'cpb_grid'),
                         (attention_module, 'aggregated_attention'),
                         (attention_module, 'full_attention'),
                         (cosine_attention, 'pooled_attention'), (cosine_attention, 'fold_grid'),
                         (position_bias, 'fold_rows'), (position_bias, 'fold_grid'),
                         (position_bias.BiasTaps, 'build'),
                         (bias_ops, 'expand_columns'), (bias_ops, 'expand_columns_torch'),
                         (extension, 'expand_bias_available'), (extension, 'load_extension'),
                         (cosine_attention, 'sliding_window_qk_ext'),
                         (cosine_attention, 'sliding_window_av_ext')]:
        monkeypatch.setattr(module, name, forbidden)
    x = torch.randn(2, 63, 24)
    with torch.no_grad():
        out = models[0](x, geometry)
        expected = reference_aggregated_attention(
            models[0], x, size, pool, reference_bias(models[0], size, pool, (14, 14), trained))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        out = models[1](x, full_geometry)
        expected = reference_full_attention(models[1], x, reference_bias(
            models[1], size, size, (14, 14), (((7, 7),) * 2) if interp else None))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('impl', ['torch', 'ext', 'triton'])
@pytest.mark.parametrize('full', [False, True])
def test_an_empty_batch_gives_empty_outputs_and_zero_gradients(impl, full):
    """A batch of 0 images: an empty output and input gradient, zero parameter gradients, on
    every backend of the fast path (the Triton kernels in the interpreter)."""
    from mmtransnext.ops import extension
    if impl == 'ext' and extension.unsupported_reason('cpu', torch.float32):
        pytest.skip(extension.unsupported_reason('cpu', torch.float32))
    size = (7, 9)
    pool = size if full else (3, 4)
    layer = FullAttention(48, 2, attn_impl=impl) if full else \
        AggregatedAttention(48, 2, 3, 2, attn_impl=impl)
    perturb_(layer)
    x = torch.randn(0, 63, 48, requires_grad=True)
    out = layer(x, _geometry(size, pool, None if full else 3, (6, 6)))
    assert out.shape == (0, 63, 48)
    grads = torch.autograd.grad(out.sum(), [x, *layer.parameters()], allow_unused=True)
    assert grads[0].shape == x.shape
    for (name, _), grad in zip(layer.named_parameters(), grads[1:]):
        assert grad is None or not grad.abs().any(), name
