import pytest
import torch

from bias_helpers import gather_bias, table_grid
from mmtransnext.models.layers import position_bias
from mmtransnext.models.layers.position_bias import (build_position_table, cached_position_table,
                                                     official_position_bias,
                                                     official_position_table)
from mmtransnext.models.layers.size_cache import SizeKeyedCache
from reference import brute_force_table, gather_and_resize


@pytest.mark.parametrize('query,key,pretrain', [
    ((7, 7), (7, 7), (7, 7)),          # full attention at 224 px
    ((56, 56), (7, 7), (56, 56)),      # stage 1 at 224 px
    ((25, 31), (3, 3), (56, 56)),      # odd sizes
    ((13, 5), (1, 1), (28, 28)),       # one pooled token
    ((1, 1), (1, 1), (7, 7)),
])
def test_separable_table_equals_brute_force_unique(query, key, pretrain):
    table = build_position_table(query, key, pretrain, torch.device('cpu'))
    index, coords = brute_force_table(query, key, pretrain)
    torch.testing.assert_close(table.coords, coords, rtol=0, atol=0)
    # The separable gather must pick the same row for every (query, key) pair.
    values = torch.randn(coords.shape[0], 3)
    expected = values.t()[:, index]
    torch.testing.assert_close(gather_bias(table, values), expected, rtol=0, atol=0)


@pytest.mark.parametrize('built,size', [
    (((9, 7), (3, 2)), ((9, 7), (3, 2))),       # extrapolation: a gather
    (((12, 10), (3, 2)), ((9, 17), (2, 4))),    # interpolation: resized
    (((7, 7), (7, 7)), ((5, 9), (5, 9))),       # full attention
])
def test_official_position_bias_equals_the_tests_oracle(built, size):
    """The reference path's bias (package) against the tests' own brute-force oracle."""
    fc1, fc2 = torch.nn.Linear(2, 16), torch.nn.Linear(16, 3)
    table = official_position_table(*built, (14, 14), torch.device('cpu'))
    index, coords = brute_force_table(*built, (14, 14))
    torch.testing.assert_close(table.coords, coords, rtol=0, atol=0)
    assert table.index.equal(index.reshape(-1))
    with torch.no_grad():
        got = official_position_bias(fc1, torch.nn.ReLU(), fc2, table, *size, built != size)
        expected = gather_and_resize(fc2(torch.relu(fc1(coords))), index, built, *size)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_small_pretrain_grid_is_rejected():
    with pytest.raises(ValueError, match='pretrain grid'):
        build_position_table((4, 4), (2, 2), (1, 7), torch.device('cpu'))


def test_cache_hits_and_bound():
    cache = SizeKeyedCache(max_entries=3)
    cpu = torch.device('cpu')
    first = cached_position_table(cache, (8, 8), (2, 2), (56, 56), cpu)
    assert cached_position_table(cache, (8, 8), (2, 2), (56, 56), cpu) is first
    assert (cache.hits, cache.misses) == (1, 1)
    for n in range(4, 10):
        cached_position_table(cache, (n, n), (1, 1), (56, 56), cpu)
    assert len(cache) == 3
    # the first entry was least recently used: it is rebuilt
    misses = cache.misses
    cached_position_table(cache, (8, 8), (2, 2), (56, 56), cpu)
    assert cache.misses == misses + 1


def test_cache_rebuilds_an_entry_its_check_calls_stale():
    cache = SizeKeyedCache(max_entries=2)
    first = cache.get('k', lambda: [1])
    assert cache.get('k', lambda: [2], lambda entry: entry == [1]) is first
    assert cache.get('k', lambda: [2], lambda entry: entry == [1]) is first
    assert cache.get('k', lambda: [2], lambda entry: False) == [2]
    assert (cache.hits, cache.misses) == (2, 2)
    cache.clear()
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)


def test_bias_taps_are_built_once_per_size_pair_and_bounded(monkeypatch):
    monkeypatch.setattr(position_bias, 'TAPS_PER_TABLE', 2)
    table = build_position_table((8, 8), (2, 2), (56, 56), torch.device('cpu'))
    taps = table.taps((12, 10), (3, 2))
    assert table.taps((12, 10), (3, 2)) is taps
    assert taps.rows_h.shape[:2] == (12, 3) and taps.rows_h.shape[-1] > 1
    assert taps.weights_w.dtype == torch.float32
    same = table.taps((8, 8), (2, 2))  # the table's own grids: one tap of weight 1 per axis
    assert same.weights_h is None and same.rows_w.shape[-1] == 1 and same.weights_w is None
    table.taps((16, 16), (4, 4))  # a third pair drops the least recently used one
    assert len(table._taps) == 2 and table.taps((8, 8), (2, 2)) is same
    assert table.taps((12, 10), (3, 2)) is not taps


def test_cache_rejects_zero_size():
    with pytest.raises(ValueError, match='max_entries'):
        SizeKeyedCache(0)


@pytest.mark.parametrize('chunk', [1 << 22, 700])  # one chunk; many chunks with a ragged end
@pytest.mark.parametrize('bias,autocast', [(True, False), (False, False), (True, True)])
def test_cpb_grid_equals_mlp_over_coords(monkeypatch, chunk, bias, autocast):
    """Grid and parameter gradients equal the MLP over the coordinate list; with or without
    biases; under bfloat16 autocast (forward and backward) still in float32, same numbers."""
    monkeypatch.setattr(position_bias, 'CPB_CHUNK_ELEMENTS', chunk)
    table = build_position_table((9, 7), (3, 2), (14, 14), torch.device('cpu'))
    fc1, fc2 = torch.nn.Linear(2, 16, bias=bias), torch.nn.Linear(16, 3, bias=bias)
    if bias:
        with torch.no_grad():
            fc1.bias.normal_()
    params = [*fc1.parameters(), *fc2.parameters()]
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        grid = position_bias.cpb_grid(fc1, fc2, table)
        weights = torch.randn(grid.shape)
        (grid * weights).sum().backward()
    assert grid.dtype == torch.float32
    fast_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    expected = table_grid(table, fc2(torch.relu(fc1(table.coords))))
    (expected * weights).sum().backward()
    torch.testing.assert_close(grid, expected, rtol=1e-5, atol=1e-6)
    for fast, p in zip(fast_grads, params):
        assert fast.dtype == torch.float32 and fast.abs().sum() > 0
        torch.testing.assert_close(fast, p.grad, rtol=1e-4, atol=1e-5)
