"""The position-bias expansion (compiled kernel and PyTorch path) against the official
computation written independently in the tests' oracle: the brute-force table of all
(query, key) pairs, a gather, and ``F.interpolate``."""
import pytest
import torch

from bias_helpers import expand_bias, table_grid
from mmtransnext.models.layers.position_bias import build_position_table
from mmtransnext.ops import bias_ops, extension
from mmtransnext.ops.dispatch import backend_for
from reference import brute_force_table, gather_and_resize

CPU = torch.device('cpu')
PRETRAIN = (28, 28)

# (table query grid, table key grid, query size, key size): same size (a gather), rows kept
# and columns stretched (1333x800-like detection inputs), both axes resized, one pixel.
CASES = [
    ((12, 10), (3, 2), (12, 10), (3, 2)),
    ((12, 10), (3, 2), (12, 17), (3, 4)),
    ((12, 10), (3, 2), (9, 17), (2, 4)),
    ((20, 20), (5, 5), (31, 13), (7, 3)),
    ((12, 10), (3, 2), (1, 1), (1, 1)),
]


@pytest.fixture(scope='module', autouse=True)
def _compiled():
    assert extension.expand_bias_available(), 'the compiled expand_bias op is not available'


@pytest.mark.parametrize('impl', ['auto', 'torch'])
@pytest.mark.parametrize('table_q,table_k,query,key', CASES)
def test_expand_bias_equals_official_gather_then_resize(table_q, table_k, query, key, impl,
                                                        monkeypatch):
    table = build_position_table(table_q, table_k, PRETRAIN, CPU)
    index, coords = brute_force_table(table_q, table_k, PRETRAIN)
    # The grid's rows are the sorted unique coordinates, the order of the official table.
    torch.testing.assert_close(table.coords, coords, rtol=0, atol=0)
    values = torch.randn(coords.shape[0], 3, dtype=torch.float64, requires_grad=True)
    expected = gather_and_resize(values, index, (table_q, table_k), query, key)
    if impl == 'torch':
        monkeypatch.setattr(torch.ops.mmtransnext, 'expand_bias',
                            lambda *args: pytest.fail('kernel used'))
    got = expand_bias(table_grid(table, values), table, query, key, impl)
    # tap weights are computed in float32, as F.interpolate does for float32 inputs
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    grad = torch.randn_like(got)
    (want_grad,) = torch.autograd.grad(expected, values, grad)
    (got_grad,) = torch.autograd.grad(got, values, grad)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('table_q,table_k,query,key', CASES[1:3])
def test_compiled_and_torch_paths_agree_with_gradcheck(table_q, table_k, query, key):
    rows = torch.randint(0, 7, (query[1], key[1], 4))
    weights = torch.rand(query[1], key[1], 4)
    folded = torch.randn(2, 3, key[0], 7, dtype=torch.float64, requires_grad=True)
    backend = backend_for('ext', folded)
    assert backend.bias == 'compiled'
    ext = bias_ops.expand_columns(folded, rows, weights, backend)
    ref = bias_ops.expand_columns_torch(folded, rows, weights)
    torch.testing.assert_close(ext, ref)
    assert torch.autograd.gradcheck(
        lambda f: bias_ops.expand_columns(f, rows, weights, backend), (folded,))


def test_an_attn_impl_string_is_a_type_error():
    """The ops choose nothing: the caller passes the Backend it decided."""
    folded, rows = torch.randn(1, 2, 2, 3), torch.zeros(2, 2, 1, dtype=torch.long)
    with pytest.raises(TypeError, match=r"expand_columns takes the Backend decided for this "
                                        r"forward, got str 'ext'; decide it once with "
                                        r'mmtransnext\.ops\.dispatch\.backend_for'):
        bias_ops.expand_columns(folded, rows, None, 'ext')


def test_opcheck():
    folded = torch.randn(2, 3, 2, 5, requires_grad=True)
    rows = torch.randint(0, 5, (4, 3, 2))
    weights = torch.rand(4, 3, 2)
    torch.library.opcheck(torch.ops.mmtransnext.expand_bias.default, (folded, rows, weights))


def test_bad_rows_are_rejected():
    with pytest.raises(RuntimeError, match=r'rows index 3 outside \[0, 3\)'):
        torch.ops.mmtransnext.expand_bias(torch.randn(1, 2, 2, 3), torch.full((2, 2, 1), 3),
                                          torch.ones(2, 2, 1))
    with pytest.raises(RuntimeError, match=r'rows index -1 outside'):
        torch.ops.mmtransnext.expand_bias_backward(torch.randn(1, 2, 2, 2, 2),
                                                   torch.full((2, 2, 1), -1),
                                                   torch.ones(2, 2, 1), 3)
    with pytest.raises(RuntimeError, match='float32'):
        torch.ops.mmtransnext.expand_bias(torch.randn(1, 2, 2, 3),
                                          torch.zeros(2, 2, 1, dtype=torch.long),
                                          torch.ones(2, 2, 1, dtype=torch.float64))


@pytest.mark.parametrize('with_weights', [True, False])
def test_torch_backward_is_the_gradient_of_the_torch_path(with_weights):
    """The written-out adjoint (used inside the pooled attention's backward) equals autograd
    through the PyTorch expansion, repeated columns included."""
    rows = torch.randint(0, 5, (6, 3, 4 if with_weights else 1))
    weights = torch.rand(6, 3, 4) if with_weights else None
    folded = torch.randn(2, 3, 2, 5, dtype=torch.float64, requires_grad=True)
    out = bias_ops.expand_columns_torch(folded, rows, weights)
    grad = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, folded, grad)
    got = bias_ops.expand_columns_torch_backward(grad, rows, weights, folded.shape[-1])
    torch.testing.assert_close(got, expected)
