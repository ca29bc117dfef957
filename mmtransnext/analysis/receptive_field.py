"""Effective receptive field (ERF), measured as RepLKNet does (Ding et al., CVPR 2022, sec. 5).

For each image: the gradient, with respect to the input, of the stage's central output pixel
summed over channels (after a ReLU, as RepLKNet does: without it the channel sum of a map that
ends in a LayerNorm, e.g. TransNeXt's or Swin's stage outputs, is constant at initialisation
and its gradient zero); its absolute value (``mode='relu'``: its positive part, RepLKNet's
choice) summed over the input channels. The maps of N images are averaged. RepLKNet reports
the "high-contribution area ratio": after scaling the averaged map by ``log10(1 + m)``, the
smallest centred square holding a given share (20, 30, 50, 99%) of the total, as a fraction of
the image's area (:func:`area_ratios`).
"""
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
from torch import Tensor

#: Shares of the total contribution RepLKNet reports.
DEFAULT_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
ERF_MODES = ('abs', 'relu')


def input_gradient_map(stage_fn: Callable[[Tensor], Tensor], image: Tensor,
                       mode: str = 'abs') -> Tensor:
    """``(H, W)`` contribution of every input pixel to the central output pixel.

    Args:
        stage_fn: ``(1, C, H, W)`` image -> ``(1, K, h, w)`` stage output.
        image: one input image ``(1, C, H, W)``.
        mode: 'abs' (absolute value of the gradient) or 'relu' (its positive part, as in
            RepLKNet's code).
    """
    if mode not in ERF_MODES:
        raise ValueError(f'mode must be one of {ERF_MODES}, got {mode!r}')
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'image must be a (1, C, H, W) tensor, got {tuple(image.shape)}')
    image = image.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = stage_fn(image)
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f'the stage output must be a (1, K, h, w) tensor, got {shape}')
        centre = out[0, :, out.shape[2] // 2, out.shape[3] // 2].relu()
        grad, = torch.autograd.grad(centre.sum(), image)
    grad = grad.relu() if mode == 'relu' else grad.abs()
    return grad[0].sum(0).detach()


def effective_receptive_field(stage_fn: Callable[[Tensor], Tensor], images: Iterable[Tensor],
                              mode: str = 'abs',
                              progress: Optional[Callable[[], None]] = None) -> Tensor:
    """Mean of :func:`input_gradient_map` over ``images`` (all of one size); ``progress`` is
    called after each image."""
    total, count = None, 0
    for image in images:
        grad = input_gradient_map(stage_fn, image, mode).double()
        if total is not None and grad.shape != total.shape:
            raise ValueError(f'all images must have one size, got {tuple(total.shape)} and '
                             f'{tuple(grad.shape)}')
        total = grad if total is None else total + grad
        count += 1
        if progress is not None:
            progress()
    if not count:
        raise ValueError('no images given')
    return (total / count).float()


def log_scaled(erf: Tensor) -> Tensor:
    """``log10(1 + erf) / max``: RepLKNet's scaling before the area ratios (in [0, 1])."""
    scaled = torch.log10(1 + erf.double())
    peak = scaled.max()
    return (scaled / peak if peak > 0 else scaled).float()


@dataclass(frozen=True)
class AreaRatio:
    """Smallest centred square holding ``threshold`` of the total (clipped to the image):
    its ``side`` in pixels and ``ratio``, its area over the image's."""
    threshold: float
    side: int
    ratio: float


def area_ratios(contribution: Tensor,
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[float, AreaRatio]:
    """High-contribution area ratios of a ``(H, W)`` non-negative map.

    The squares have odd sides ``1, 3, 5, ...`` centred on pixel ``(H // 2, W // 2)`` (the
    output pixel the map was measured for) and are clipped to the image; the first whose sum
    reaches ``threshold`` times the total (up to a relative 1e-6 for rounding) is reported.
    """
    if contribution.dim() != 2:
        raise ValueError(f'contribution must be a 2-D map, got {tuple(contribution.shape)}')
    if bool((contribution < 0).any()):
        raise ValueError('contribution must be non-negative')
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f'thresholds must lie in (0, 1], got {t}')
    data = contribution.double()
    height, width = data.shape
    total = data.sum()
    if total <= 0:
        raise ValueError('contribution is zero everywhere')
    # Cumulative sums make each square's sum O(1).
    cum = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    cum[1:, 1:] = data.cumsum(0).cumsum(1)
    cy, cx = height // 2, width // 2
    results: Dict[float, AreaRatio] = {}
    pending = sorted(thresholds)
    radius = 0
    while pending:
        y0, y1 = max(0, cy - radius), min(height, cy + radius + 1)
        x0, x1 = max(0, cx - radius), min(width, cx + radius + 1)
        inside = cum[y1, x1] - cum[y0, x1] - cum[y1, x0] + cum[y0, x0]
        full = y0 == 0 and x0 == 0 and y1 == height and x1 == width
        while pending and (inside >= pending[0] * total * (1 - 1e-6) or full):
            t = pending.pop(0)
            results[t] = AreaRatio(t, 2 * radius + 1, (y1 - y0) * (x1 - x0) / (height * width))
        radius += 1
    return {t: results[t] for t in thresholds}


def stage_output(outputs, index: int) -> Tensor:
    """Output ``index`` of a backbone's forward (a tuple/list of maps, or one map for 0)."""
    if isinstance(outputs, Tensor):
        if index != 0:
            raise ValueError(f'the backbone returns one map, so output {index} does not exist')
        return outputs
    outputs = tuple(outputs)
    if not -len(outputs) <= index < len(outputs):
        raise ValueError(f'the backbone returns {len(outputs)} maps, so output {index} does not '
                         f'exist')
    return outputs[index]

