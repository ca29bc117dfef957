"""A small TransNeXt on CUDA, every backend, against ``reference_backbone`` of tests/reference.py
(every attention replaced by the paper-equation oracle) run in float32 on the CPU: the four
output maps and the gradients of the image and of every parameter, at an odd input size and
batch, in both position-bias modes, in float32 and under bfloat16 autocast."""
from typing import Dict

import pytest
import torch

from gpu_helpers import (BACKENDS, SUM_TOLERANCES, autocast, check_close, gradients, max_error,
                         skip_unavailable)
from mmtransnext import TransNeXt
from reference import perturb_, reference_backbone

pytestmark = pytest.mark.gpu

# Head dim 24 in every stage (as TransNeXt-Tiny): the kernels compiled for the layer tests.
ARCH = dict(embed_dims=[24, 48, 48, 48], num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1])
# Stage maps 12x18, 6x9, 3x5, 2x3; batch 3: the Triton query backward's second pair of batch
# items half-filled in every stage.
IMAGE = (3, 3, 45, 70)
MODES = {'interpolation': False, 'extrapolation': True}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def build(backend: str, extrapolation: bool) -> TransNeXt:
    mode, impl = BACKENDS[backend]
    torch.manual_seed(3)
    model = TransNeXt(ARCH, img_size=64, pretrain_size=64, is_extrapolation=extrapolation,
                      attn_impl=impl, attention_mode=mode)
    return perturb_(model).train()


def inputs():
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(IMAGE, generator=gen)
    model = build('torch', False)
    with torch.no_grad():
        shapes = [o.shape for o in model(image)]
    return image, [torch.randn(s, generator=gen) for s in shapes]


_expected: Dict[str, list] = {}


def expected(mode: str) -> list:
    """Outputs, then gradients of the image and the parameters, of the oracle (CPU, float32)."""
    if mode not in _expected:
        model = build('reference', MODES[mode])
        image, grads_out = inputs()
        image = image.requires_grad_()
        outs = reference_backbone(model, image)
        loss = sum((o * g).sum() for o, g in zip(outs, grads_out))
        _expected[mode] = [o.detach() for o in outs] + gradients(
            loss, [image] + list(model.parameters()), torch.ones(()))
    return _expected[mode]


def run(backend: str, mode: str, dtype: torch.dtype,
        device: torch.device = torch.device('cuda')) -> list:
    model = build(backend, MODES[mode]).to(device)
    image, grads_out = inputs()
    image = image.to(device).requires_grad_()
    with autocast(dtype, device.type):
        outs = model(image)
    loss = sum((o.float() * g.to(device)).sum() for o, g in zip(outs, grads_out))
    return [o.detach() for o in outs] + gradients(loss, [image] + list(model.parameters()),
                                                  torch.ones((), device=device))


_baselines: Dict[str, list] = {}


@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('backend', list(BACKENDS))
def test_backbone_matches_the_reference(backend, mode, dtype):
    skip_unavailable(backend)
    dtype = DTYPES[dtype]
    got, want = run(backend, mode, dtype), expected(mode)
    baselines = [0.0] * len(want)
    if dtype != torch.float32:
        key = mode
        if key not in _baselines:
            _baselines[key] = [0.0 if g is None or w is None else max_error(g, w)
                               for g, w in zip(run('reference', mode, dtype), want)]
        baselines = _baselines[key]
    model = build('torch', False)
    labels = [f'out{i}' for i in range(4)] + ['dimage'] + \
        ['d' + n for n, _ in model.named_parameters()]
    assert len(got) == len(want) == len(labels)
    for label, g, w, base in zip(labels, got, want, baselines):
        floor, tol = 0.1, None
        if any(name in label for name in ('cpb', 'relative_pos_bias', 'temperature')):
            # Sums over a whole map of terms that cancel: relative to max(scale, 1), in 16 bits
            # at gpu_helpers.SUM_TOLERANCES (see test_gpu_attention_layers.compare; an
            # indexing error is O(1)); stage 4 (block4) is full attention.
            kind = 'full' if label.startswith('dblock4.') else 'aggregated'
            floor, tol = 1.0, SUM_TOLERANCES.get(dtype, {}).get((kind,
                                                                 'd' + label.rsplit('.', 1)[-1]))
        check_close(label, None if g is None else g.float(), w, dtype, floor=floor,
                    baseline=base, tol=tol)
