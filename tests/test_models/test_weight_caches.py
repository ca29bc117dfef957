"""Both backbones keep weight-derived position biases between inference forwards (TransNeXt's
CPB grids, TransXNet's resized tables). Whatever way the weights change after a forward, the
next forward must equal, bit for bit, a fresh model loaded with the same weights."""
import pytest
import torch
from mmengine.model import ExponentialMovingAverage

from mmtransnext.models import TransNeXt, TransXNet

FAMILIES = {
    'transnext': lambda: TransNeXt('micro', depths=[1, 1, 1, 1]).eval(),
    'transxnet': lambda: TransXNet('t', depths=[1, 1, 1, 1]).eval(),
}


def _noise_(model):
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    return model


def _data_add(model, build):
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def _copy_no_grad(model, build):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p + 0.05 * torch.randn_like(p))
    return model


def _load_state_dict(model, build):
    other = _noise_(build())
    model.load_state_dict(other.state_dict())
    return model


def _ema(model, build):
    """mmengine's EMA: the first update copies, the later ones average, all through .data."""
    ema = ExponentialMovingAverage(model, momentum=0.3)
    _forward(ema.module)  # the copy's caches are warm before it is updated
    source = _noise_(build())
    ema.update_parameters(source)
    _forward(ema.module)
    _noise_(source)
    ema.update_parameters(source)
    return ema.module


def _mean_teacher(model, build, momentum=0.3):
    """mmdet's MeanTeacherHook.momentum_update, written out."""
    student = _noise_(build())
    for src, dst in zip(student.parameters(), model.parameters()):
        dst.data.mul_(1 - momentum).add_(src.data, alpha=momentum)
    return model


def _cast_round_trip(model, build):
    """to(float64), an update there, back to float32: new tensors whose storage and version
    counters may be those the caches saw before."""
    model.to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(torch.float32)


UPDATES = {
    'data_add': _data_add,
    'copy_no_grad': _copy_no_grad,
    'load_state_dict': _load_state_dict,
    'ema': _ema,
    'mean_teacher': _mean_teacher,
    'cast_round_trip': _cast_round_trip,
}

def _forward(model, x=None):
    x = torch.randn(1, 3, 65, 71, generator=torch.Generator().manual_seed(1)) if x is None else x
    with torch.no_grad():
        return model(x.to(next(model.parameters()).dtype))


def _assert_matches_fresh(model, family):
    fresh = FAMILIES[family]().to(next(model.parameters()).dtype)
    fresh.load_state_dict(model.state_dict())
    for out, expected in zip(_forward(model), _forward(fresh)):
        assert torch.equal(out, expected), (out - expected).abs().max()


@pytest.mark.parametrize('update', sorted(UPDATES))
@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_cached_biases_follow_weight_updates(family, update):
    model = FAMILIES[family]()
    _forward(model)  # caches warm
    model = UPDATES[update](model, FAMILIES[family])
    _assert_matches_fresh(model, family)
    _assert_matches_fresh(model, family)  # and once more, now from the rebuilt caches


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_nan_weights_are_never_served_from_the_cache(family):
    """A NaN that becomes a number again must not leave the NaN bias behind."""
    model = FAMILIES[family]()
    params = [p for name, p in model.named_parameters()
              if 'cpb_fc1.weight' in name or 'relative_pos_enc' in name]
    saved = [p.detach().clone() for p in params]
    for p in params:
        p.data.fill_(float('nan'))
    assert not all(torch.isfinite(o).all() for o in _forward(model))
    for p, value in zip(params, saved):
        p.data.copy_(value)
    _assert_matches_fresh(model, family)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_off_the_cpu_inference_reads_no_weight_on_the_host(family):
    # On a GPU the check would be a host synchronisation: there nothing is kept and nothing is
    # compared. Meta tensors have no data, so any read of a value on the host raises.
    model = FAMILIES[family]().to(torch.device('meta'))
    x = torch.randn(1, 3, 65, 71, device='meta')
    with torch.no_grad():
        for _ in range(2):  # the second forward is where a kept value would be checked
            assert len(model(x)) == 4
