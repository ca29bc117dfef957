import torch

from mmtransnext.models.layers.weight_cache import WeightKeyed, reuse_or_build


def test_a_value_is_reused_only_for_bit_identical_weights():
    weight, bias = torch.randn(4, 3), torch.zeros(4)
    entry = WeightKeyed.build([weight, bias], lambda: 'computed')
    assert entry.value == 'computed' and entry.matches([weight, bias])
    assert reuse_or_build(entry, [weight, bias], lambda: 'again') is entry
    bias.data[0] = -0.0  # equal as numbers, different bits
    assert not entry.matches([weight, bias])
    bias.data[0] = 0.0
    assert entry.matches([weight, bias])
    assert not entry.matches([weight.double(), bias])  # a cast
    assert not entry.matches([weight.t(), bias])  # another shape
    assert not entry.matches([weight])
    weight.data[1, 2] += 1e-7
    assert reuse_or_build(entry, [weight, bias], lambda: 'again').value == 'again'


def test_nan_weights_match_only_their_own_bits():
    weight = torch.tensor([float('nan'), 1.0])
    entry = WeightKeyed.build([weight], lambda: None)
    assert entry.matches([weight.clone()])
    weight.data[0] = -float('nan')
    assert not entry.matches([weight])
