"""What every backbone of the package shares: argument checks (:func:`check_int`,
:func:`check_real`, :func:`check_rate`, :func:`check_flag`, :func:`to_pair`: a TypeError for a
wrong type, a ValueError out of range, both naming the argument, the value and what is
allowed), stage options, freezing, pretrained loading, input checks and ``feature_info``.

A family subclasses :class:`MultiStageBackbone`, calls :meth:`~MultiStageBackbone.setup_stages`
in its ``__init__`` and says which of its parts make up the stem and each stage
(:meth:`~MultiStageBackbone.stem_parts`, :meth:`~MultiStageBackbone.stage_parts`); the rest
(``out_indices`` / ``frozen_stages`` / ``norm_eval`` handling, ``init_cfg=dict(type='Pretrained',
...)`` through :func:`mmtransnext.checkpoint.load_pretrained`) comes from here.
"""
import copy
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a channel count or stage index is always a mistake
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool; a TypeError naming ``name`` otherwise (a string such as
    ``'no'`` would pass as true)."""
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool (True or False), got {value!r}')
    return value


def check_int(name: str, value: object, low: int, high: Optional[int] = None) -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None): a
    TypeError naming ``name`` if it is not an int, a ValueError if it is out of range."""
    allowed = f'an int >= {low}' if high is None else f'an int in [{low}, {high}]'
    if not _is_int(value):
        raise TypeError(f'{name} must be {allowed}, got {value!r}')
    if value < low or (high is not None and value > high):
        raise ValueError(f'{name} must be {allowed}, got {value!r}')
    return int(value)


def check_real(name: str, value: object, low: float, high: Optional[float] = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (open ends where
    ``low_open`` / ``high_open``; unbounded above when ``high`` is None): a TypeError naming
    ``name`` if it is not a number, a ValueError if it is NaN, infinite or out of range."""
    upper = 'inf)' if high is None else f'{high}{")" if high_open else "]"}'
    allowed = f'a number in {"(" if low_open else "["}{low}, {upper}'
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f'{name} must be {allowed}, got {value!r}')
    if not math.isfinite(value) or value < low or (low_open and value == low) or (
            high is not None and (value > high or (high_open and value == high))):
        raise ValueError(f'{name} must be {allowed}, got {value!r}')
    return float(value)


def check_rate(name: str, value: object) -> float:
    """A dropout or stochastic-depth rate: a number in ``[0, 1)`` (at 1 every path is dropped
    and the rescaling divides by zero)."""
    return check_real(name, value, 0, 1, high_open=True)


def to_pair(value: Union[int, Sequence[int]], name: str, minimum: int = 1) -> Tuple[int, int]:
    """``value`` as an ``(h, w)`` pair of ints >= ``minimum``: a TypeError naming ``name`` if
    it is not an int or a sequence of ints, a ValueError for another length or a small value."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        if len(value) != 2:
            raise ValueError(f'{name} must be an int or a pair of ints (h, w), got {value!r}')
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f'{name} must be an int or a pair of ints (h, w), got {value!r}')
    if min(pair) < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value!r}')
    return pair


#: Per-stage integer settings and their smallest value; ``mlp_ratios`` are numbers > 0.
STAGE_INT_MINIMUM = dict(depths=1, embed_dims=1, num_heads=1, sr_ratios=1, num_groups=2)


def resolve_stage_settings(family: str, arch: Union[str, dict], presets: Dict[str, dict],
                           defaults: dict, stage_keys: Sequence[str], required: Sequence[str],
                           overrides: Dict[str, object]) -> dict:
    """Per-stage settings of ``arch`` (a preset name or a dict) with the non-None
    ``overrides``, every ``stage_keys`` entry a list with one value per stage, the keys of
    :data:`STAGE_INT_MINIMUM` and ``mlp_ratios`` range-checked.

    Args:
        family: backbone name, for messages.
        arch: a name in ``presets`` or a dict of ``stage_keys``.
        presets: named variants (without ``defaults``).
        defaults: values of the keys a preset or dict may omit.
        stage_keys: keys holding one value per stage; the only keys an arch dict may have
            (besides those in ``defaults``).
        required: keys an arch dict must have.
        overrides: per-key overrides (None: keep).
    """
    allowed = list(dict.fromkeys([*stage_keys, *defaults]))
    if isinstance(arch, str):
        if arch not in presets:
            raise ValueError(f'unknown {family} arch {arch!r}; choose one of '
                             f'{sorted(presets)} or pass a dict of {allowed}')
        settings = dict(defaults, **presets[arch])
    elif isinstance(arch, dict):
        unknown = set(arch) - set(allowed)
        if unknown:
            raise ValueError(f'unknown key(s) {sorted(unknown)} in {family} arch dict; '
                             f'allowed: {allowed}')
        missing = set(required) - set(arch)
        if missing:
            raise ValueError(f'{family} arch dict lacks {sorted(missing)}')
        settings = dict(defaults, **arch)
    else:
        raise TypeError(f'arch must be a preset name or a dict, got {arch!r}')
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in stage_keys:
        if not isinstance(settings[key], (list, tuple)):
            raise TypeError(f'{key} must be a list with one value per stage, '
                            f'got {settings[key]!r}')
        settings[key] = list(settings[key])
    num_stages = len(settings['depths'])
    if num_stages < 1:
        raise ValueError(f'depths must list at least one stage, got {settings["depths"]!r}')
    for key in stage_keys:
        if len(settings[key]) != num_stages:
            raise ValueError(f'{key} has {len(settings[key])} entries but depths '
                             f'{settings["depths"]!r} has {num_stages}; give one value per '
                             f'stage')
        for i, value in enumerate(settings[key]):
            if key in STAGE_INT_MINIMUM:
                settings[key][i] = check_int(f'{key}[{i}]', value, STAGE_INT_MINIMUM[key])
            elif key == 'mlp_ratios':
                settings[key][i] = check_real(f'{key}[{i}]', value, 0, low_open=True)
    return settings


#: Keys ``init_cfg=dict(type='Pretrained', ...)`` accepts.
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location', 'strict', 'allow_non_finite')

#: A stage part: a module (put in eval mode and frozen) or a bare parameter (frozen).
Part = Union[nn.Module, nn.Parameter]


class MultiStageBackbone(BaseModule):
    """Base of the package's backbones: ``num_stages`` stages at strides 4, 8, 16, 32, ...

    Subclasses set, in ``__init__`` (before building layers that depend on them)::

        self.setup_stages(num_stages, in_channels, out_indices, frozen_stages, norm_eval)

    then build their modules, and finish with ``self.finish_setup(channels, output_modules)``.

    Attributes:
        pretrained_weights: where the official pretrained weights are published (named by the
            tools when a configured checkpoint is missing).
        pretrained_optional_keys: state-dict key prefixes a pretraining file may lack (e.g.
            output norms added for dense prediction); they keep their initialisation and do not
            fail strict loading.
    """

    pretrained_weights: str = ''
    pretrained_optional_keys: Tuple[str, ...] = ()

    def __init__(self, init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.frozen_stages = -1
        self.norm_eval = False

    # ----------------------------------------------------------------------------- set-up
    def setup_stages(self, num_stages: int, in_channels: int, out_indices: Sequence[int],
                     frozen_stages: int, norm_eval: bool = False) -> None:
        """Validate and store the stage options shared by all families."""
        self.num_stages = num_stages
        self.in_channels = check_int('in_channels', in_channels, 1)
        if not isinstance(out_indices, (list, tuple)) or not all(
                _is_int(i) for i in out_indices):
            raise TypeError(f'out_indices must be a list or tuple of stage indices (ints), '
                            f'got {out_indices!r}')
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(not 0 <= i < num_stages for i in self.out_indices) or \
                len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(f'out_indices must be non-empty distinct stage indices in '
                             f'[0, {num_stages - 1}], got {out_indices!r}')
        self.frozen_stages = check_int('frozen_stages', frozen_stages, -1, num_stages)
        self.norm_eval = check_flag('norm_eval', norm_eval)

    def finish_setup(self, channels: Sequence[int], output_modules: Sequence[str]) -> None:
        """Set ``feature_info`` (timm style: channels, reduction, module per stage) and apply
        ``frozen_stages``."""
        self.feature_info: List[Dict[str, object]] = [
            dict(num_chs=int(c), reduction=2 ** (i + 2), module=m)
            for i, (c, m) in enumerate(zip(channels, output_modules))
        ]
        self._freeze_stages()

    # ----------------------------------------------------------------------------- stages
    def stem_parts(self) -> List[Part]:
        """Parts frozen by ``frozen_stages >= 0`` (the first patch embedding)."""
        raise NotImplementedError

    def stage_parts(self, stage: int) -> List[Part]:
        """Parts of ``stage`` (0-based) frozen with it: its blocks, the downsampling into it
        (not the stem) and its output norm."""
        raise NotImplementedError

    def frozen_parts(self) -> List[Part]:
        """Everything ``frozen_stages`` freezes."""
        if self.frozen_stages < 0:
            return []
        parts = list(self.stem_parts())
        for stage in range(self.frozen_stages):
            parts += self.stage_parts(stage)
        return parts

    def _freeze_stages(self) -> None:
        for part in self.frozen_parts():
            if isinstance(part, nn.Parameter):
                part.requires_grad = False
                continue
            part.eval()
            for param in part.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'MultiStageBackbone':
        """Set train mode, keeping frozen stages (and with ``norm_eval`` every BatchNorm) in
        eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # ----------------------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Load ``init_cfg`` Pretrained weights (reporting every key) or keep the official init."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            from ...checkpoint import load_pretrained
            unknown = set(self.init_cfg) - set(PRETRAINED_KEYS)
            if unknown:
                raise ValueError(f'unknown key(s) {sorted(unknown)} in {type(self).__name__} '
                                 f'init_cfg; allowed: {list(PRETRAINED_KEYS)}')
            if not self.init_cfg.get('checkpoint'):
                raise ValueError("init_cfg type 'Pretrained' needs a 'checkpoint' path")
            load_pretrained(self, self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'),
                            map_location=self.init_cfg.get('map_location', 'cpu'),
                            strict=self.init_cfg.get('strict', True),
                            optional=self.pretrained_optional_keys,
                            allow_non_finite=self.init_cfg.get('allow_non_finite'))
            self._is_init = True
        elif self.init_cfg is not None:
            super().init_weights()
        else:
            self._is_init = True

    # ----------------------------------------------------------------------------- input
    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming the problem unless ``x`` is a non-empty floating-point
        ``(N, in_channels, H, W)`` batch."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise ValueError(f'{name} expects a tensor, got {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'{name} expects a 4-D (N, C, H, W) image batch, got a '
                             f'{x.dim()}-D tensor of shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'{name} was built for {self.in_channels} input channels but the '
                             f'input has {x.shape[1]} (shape {tuple(x.shape)})')
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f'{name} got an empty input of shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'{name} expects a floating-point input, got {x.dtype}')
