"""Effective receptive field and RepLKNet's area ratios on cases with known answers."""
import pytest
import torch
from torch import nn

from mmtransnext.analysis import (area_ratios, effective_receptive_field, input_gradient_map,
                                  log_scaled, stage_output)


def _conv_stack(layers: int) -> nn.Sequential:
    """``layers`` 3x3 convs, positive weights, no bias, no nonlinearity: the receptive field of
    one output pixel is exactly the (2 * layers + 1)^2 square around it, every pixel of it
    contributing (with a positive image, every output is positive)."""
    convs = []
    for i in range(layers):
        conv = nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.uniform_(0.1, 1.0)
        convs.append(conv)
    return nn.Sequential(*convs)


@pytest.mark.parametrize('layers,size', [(1, (9, 9)), (3, (33, 33)), (4, (20, 27))])
def test_gradient_support_is_the_analytic_receptive_field(layers, size):
    net = _conv_stack(layers)
    grad = input_gradient_map(net, torch.rand(1, 3, *size) + 0.1)
    cy, cx = size[0] // 2, size[1] // 2
    expected = torch.zeros(size, dtype=torch.bool)
    expected[cy - layers:cy + layers + 1, cx - layers:cx + layers + 1] = True
    assert torch.equal(grad > 0, expected)
    # linear net: the map does not depend on the image, and the ERF of N images equals it
    erf = effective_receptive_field(net, [torch.rand(1, 3, *size) + 0.1 for _ in range(3)])
    torch.testing.assert_close(erf, grad)


def test_modes_and_the_relu_on_outputs():
    """'abs' sums |w|, 'relu' (RepLKNet) the positive weights; negative central outputs are
    dropped (RepLKNet's ReLU) in both."""
    conv = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(1, 3, 3, 3))
        conv.bias.fill_(100.)  # the output is positive
    image = torch.rand(1, 3, 7, 7)
    window = (slice(2, 5), slice(2, 5))
    expected = {'abs': conv.weight[0].abs().sum(0), 'relu': conv.weight[0].relu().sum(0)}
    for mode, weights in expected.items():
        grad = input_gradient_map(conv, image, mode=mode)
        torch.testing.assert_close(grad[window], weights.detach())
        assert grad.sum() == grad[window].sum()
    with torch.no_grad():
        conv.bias.fill_(-100.)
    for mode in ('abs', 'relu'):
        assert input_gradient_map(conv, image, mode=mode).abs().sum() == 0
    with pytest.raises(ValueError, match='mode must be one of'):
        input_gradient_map(conv, image, mode='square')


def test_erf_is_the_mean_over_images():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))
    images = [torch.randn(1, 3, 12, 12) for _ in range(3)]
    maps = [input_gradient_map(net, img) for img in images]
    calls = []
    erf = effective_receptive_field(net, images, progress=lambda: calls.append(1))
    torch.testing.assert_close(erf, sum(maps) / 3)
    assert len(calls) == 3
    with pytest.raises(ValueError, match='no images'):
        effective_receptive_field(net, [])
    with pytest.raises(ValueError, match='one size'):
        effective_receptive_field(net, [images[0], torch.randn(1, 3, 10, 12)])


def test_area_ratios_on_a_known_map():
    data = torch.zeros(21, 21)
    data[10, 10] = 0.25                       # centre: 25%
    data[9:12, 9:12] += 0.25 / 8              # ring at distance 1: 25%
    data[10, 10] -= 0.25 / 8
    data[5, 5:16] += 0.5 / 40                 # ring at distance 5: 50%
    data[15, 5:16] += 0.5 / 40
    data[6:15, 5] += 0.5 / 40
    data[6:15, 15] += 0.5 / 40
    assert data.sum().item() == pytest.approx(1.0)
    ratios = area_ratios(data)
    assert [r.side for r in ratios.values()] == [1, 3, 3, 11]
    assert ratios[0.2].ratio == pytest.approx(1 / 441)
    assert ratios[0.99].ratio == pytest.approx(121 / 441)
    assert area_ratios(data, [0.26])[0.26].side == 3
    assert area_ratios(data, [0.51])[0.51].side == 11


def test_area_ratios_clip_to_the_image():
    data = torch.ones(4, 10)  # centre (2, 5)
    ratios = area_ratios(data, [0.1, 0.5, 1.0])
    assert ratios[0.1].side == 3 and ratios[0.1].ratio == pytest.approx(9 / 40)
    # side 5 covers rows 0..3 (clipped) and columns 3..7: 20 of 40 pixels
    assert ratios[0.5].side == 5 and ratios[0.5].ratio == pytest.approx(0.5)
    assert ratios[1.0].ratio == 1.0
    with pytest.raises(ValueError, match='non-negative'):
        area_ratios(-data)
    with pytest.raises(ValueError, match='thresholds'):
        area_ratios(data, [0.])
    with pytest.raises(ValueError, match='2-D'):
        area_ratios(data[None])


def test_log_scaled_and_stage_output():
    erf = torch.tensor([[0., 9.], [99., 0.]])
    torch.testing.assert_close(log_scaled(erf), torch.tensor([[0., 0.5], [1., 0.]]))
    maps = (torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1))
    assert stage_output(maps, 1) is maps[1]
    assert stage_output(maps[0], 0) is maps[0]
    with pytest.raises(ValueError, match='returns 2 maps'):
        stage_output(maps, 2)
