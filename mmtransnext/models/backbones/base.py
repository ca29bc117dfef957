"""What every backbone of the package shares: stage options, freezing, pretrained loading, input
checks and ``feature_info``.

A family subclasses :class:`MultiStageBackbone`, calls :meth:`~MultiStageBackbone.setup_stages`
in its ``__init__`` and says which of its parts make up the stem and each stage
(:meth:`~MultiStageBackbone.stem_parts`, :meth:`~MultiStageBackbone.stage_parts`); the rest
(``out_indices`` / ``frozen_stages`` / ``norm_eval`` handling, ``init_cfg=dict(type='Pretrained',
...)`` through :func:`mmtransnext.checkpoint.load_pretrained`) comes from here.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

def to_pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """``value`` as an ``(h, w)`` pair of ints; a ValueError naming ``name`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}')


def resolve_stage_settings(family: str, arch: Union[str, dict], presets: Dict[str, dict],
                           defaults: dict, stage_keys: Sequence[str], required: Sequence[str],
                           overrides: Dict[str, object]) -> dict:
    """Per-stage settings of ``arch`` (a preset name or a dict) with the non-None
    ``overrides``, every ``stage_keys`` entry a list with one value per stage.

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
        raise ValueError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in stage_keys:
        if not isinstance(settings[key], (list, tuple)):
            raise ValueError(f'{key} must be a list with one value per stage, '
                             f'got {settings[key]!r}')
        settings[key] = list(settings[key])
    num_stages = len(settings['depths'])
    for key in stage_keys:
        if len(settings[key]) != num_stages:
            raise ValueError(f'{key} has {len(settings[key])} entries but depths has '
                             f'{num_stages}; give one value per stage')
    if num_stages < 1 or any(not isinstance(d, int) or d < 1 for d in settings['depths']):
        raise ValueError(f'depths must be positive ints, got {settings["depths"]}')
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
        name = type(self).__name__
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'{name}: in_channels must be a positive int, got {in_channels!r}')
        self.num_stages = num_stages
        self.in_channels = in_channels
        try:
            self.out_indices = tuple(int(i) for i in out_indices)
        except (TypeError, ValueError):
            raise ValueError(f'out_indices must be a sequence of stage indices, '
                             f'got {out_indices!r}') from None
        if not self.out_indices or any(not 0 <= i < num_stages for i in self.out_indices) or \
                len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(f'out_indices {out_indices} must be non-empty distinct stage '
                             f'indices in [0, {num_stages - 1}]')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = bool(norm_eval)

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
