"""What every backbone of the package shares: argument checks (:func:`check_int`,
:func:`check_real`, :func:`check_rate`, :func:`check_flag`, :func:`to_pair`: a TypeError for a
wrong type, a ValueError out of range, both naming the argument, the value and what is
allowed), stage options, freezing, pretrained loading, input checks and ``feature_info``.

A family subclasses :class:`MultiStageBackbone` and fulfils its *family contract* (listed
in the class docstring): arch presets, the parts of the stem and of each stage, its token
mixers and how to read their attention, the layout of its official checkpoints (classifier
keys included), its export rules; it registers with :func:`register_family`. The rest
(``out_indices`` / ``frozen_stages`` / ``norm_eval`` handling,
``init_cfg=dict(type='Pretrained', ...)`` through :func:`mmtransnext.checkpoint.load_pretrained`,
input checks, ``feature_info``) comes from here. Every per-family fact lives on the family
class: checkpoint loading, deployment, the attention-map API, the analysis tools and the shared
backbone tests ask the family (:func:`family_of`, :func:`families`, :func:`family_named`) and
name none.
"""
import copy
import math
import numbers
from dataclasses import dataclass
from typing import (Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type,
                    Union)

from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...registry import register_backbone

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


@dataclass(frozen=True)
class AttentionAdapter:
    """How :func:`mmtransnext.analysis.attention_map` reads one kind of token mixer (the family
    contract's :attr:`MultiStageBackbone.attention_adapters`).

    Attributes:
        feature_size: ``(module, inputs) -> (H, W)`` of the map its input tokens form.
        weights: ``(module, inputs, (y, x)) -> dict`` of the query's attention weights (see
            :func:`mmtransnext.analysis.attention_map`); ``inputs`` are the module's positional
            arguments in the forward, ``(y, x)`` the query's cell of that map.
    """
    feature_size: Callable[[nn.Module, tuple], Tuple[int, int]]
    weights: Callable[[nn.Module, tuple, Tuple[int, int]], Dict[str, Tensor]]


class MultiStageBackbone(BaseModule):
    """Base of the package's backbones: ``num_stages`` stages at strides 4, 8, 16, 32, ...

    Subclasses set, in ``__init__`` (before building layers that depend on them)::

        self.setup_stages(num_stages, in_channels, out_indices, frozen_stages, norm_eval)

    then build their modules, and finish with ``self.finish_setup(channels, output_modules)``.

    The family contract, what a subclass provides (:func:`register_family` checks it):

    - **arch presets**: :attr:`arch_presets`; the constructor takes ``arch`` (a preset name or
      a dict) and ``depths`` (per-stage block counts overriding the preset), besides
      ``in_channels``, ``out_indices``, ``frozen_stages``, ``with_cp`` and ``init_cfg``;
    - **stages**: :meth:`stem_parts` and :meth:`stage_parts` (what ``frozen_stages`` freezes);
    - **token mixers** (the attention-map hooks): :meth:`token_mixers`, per stage and block
      the module whose softmax attention :mod:`mmtransnext.analysis.attention_maps` reads, and
      :attr:`attention_adapters`, how it reads each kind of them;
    - **checkpoint layout**: module and parameter names are those of the official
      checkpoints, which :func:`mmtransnext.checkpoint.load_pretrained` loads unchanged;
      :attr:`pretrained_optional_keys` are what those files lack (kept at their
      initialisation), :attr:`pretrained_weights` says where they are published,
      :attr:`official_classifier_keys` where the official ImageNet classifiers keep their
      classifier (:func:`mmtransnext.checkpoint.convert_official_classifier`);
    - **export rules** (:mod:`mmtransnext.deployment`): :meth:`export_refusal` (what cannot
      be exported, e.g. free input sizes, and why) and :meth:`export_position_data` (how a
      graph holds the size-dependent position data);
    - **size-dependent state**: :meth:`clear_caches` drops what forwards built lazily;
    - **for the tools** (optional): :attr:`implementations`, :attr:`default_implementation`,
      :attr:`gpu_implementations`, :attr:`size_modes`, :attr:`main_archs` and
      :meth:`for_input_size`.

    Attributes:
        arch_presets: named variants (smallest first), each a dict of per-stage lists holding
            at least ``depths``.
        main_archs: the presets the tools show by default (empty: all).
        implementations: named implementations the tools compare, name -> constructor
            keywords; the one called 'reference' (if any) is what speed-ups are measured
            against.
        default_implementation: the one a config gets.
        gpu_implementations: those whose kernels run only on a GPU.
        size_modes: how position biases follow an input size other than the pretraining one
            (names the tools take as ``--mode``).
        pretrained_weights: where the official pretrained weights are published (named by the
            tools when a configured checkpoint is missing).
        pretrained_optional_keys: state-dict key prefixes a pretraining file may lack (e.g.
            output norms added for dense prediction); they keep their initialisation and do not
            fail strict loading.
        official_classifier_keys: where the family's official ImageNet classifier files keep
            the tensors a backbone lacks, key prefix in the file -> key prefix in an
            :class:`~mmtransnext.models.classifiers.OfficialImageClassifier` (``backbone.``
            with ``out_indices=(last stage,)``, ``GlobalAveragePooling``, ``LinearClsHead`` at
            ``head.fc.``); every other key of such a file is the backbone's. Loading a backbone
            from such a file ignores (and reports) keys under these prefixes. Empty: no
            official classifier files.
        attention_adapters: how to read each kind of token mixer the family's
            :meth:`token_mixers` returns, by class (a mixer's own class first, then its
            bases); a mixer of no listed class has no attention map.
    """

    arch_presets: ClassVar[Mapping[str, dict]] = {}
    main_archs: ClassVar[Tuple[str, ...]] = ()
    implementations: ClassVar[Mapping[str, dict]] = {'default': {}}
    default_implementation: ClassVar[str] = 'default'
    gpu_implementations: ClassVar[Tuple[str, ...]] = ()
    size_modes: ClassVar[Tuple[str, ...]] = ('interpolation', )
    pretrained_weights: str = ''
    pretrained_optional_keys: Tuple[str, ...] = ()
    official_classifier_keys: ClassVar[Mapping[str, str]] = {}
    attention_adapters: ClassVar[Mapping[type, AttentionAdapter]] = {}

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

    def token_mixers(self) -> List[List[nn.Module]]:
        """The token mixer of every block, ``[stage][block]``: the module whose inputs
        :func:`mmtransnext.analysis.attention_map` records."""
        raise NotImplementedError

    @classmethod
    def attention_adapter(cls, mixer: nn.Module) -> Optional[AttentionAdapter]:
        """The :attr:`attention_adapters` entry for ``mixer`` (its own class first, then its
        bases), or None."""
        for kind in type(mixer).__mro__:
            if kind in cls.attention_adapters:
                return cls.attention_adapters[kind]
        return None

    def clear_caches(self) -> None:
        """Drop the size-dependent state built lazily by forward passes (none here)."""

    # ----------------------------------------------------------------------------- export
    def export_refusal(self, dynamic: bool) -> Optional[str]:
        """Why this backbone cannot be exported (``dynamic``: with free height and width),
        naming what to do instead; None when it can (here: always)."""
        return None

    def export_position_data(self, dynamic: bool) -> str:
        """How an export (``dynamic``: free height and width) holds the size-dependent
        position data, in words (:attr:`mmtransnext.deployment.ExportResult.tables`)."""
        return f'{type(self).__name__}: no position tables'

    @classmethod
    def for_input_size(cls, arch: str, size: Tuple[int, int], mode: str,
                       img_size: Optional[Union[int, Tuple[int, int]]] = None,
                       **kwargs) -> 'MultiStageBackbone':
        """The ``arch`` backbone as a recipe builds it for ``size`` inputs in position-bias
        ``mode`` (one of :attr:`size_modes`; ``img_size``: a training size the mode may need,
        None for the family's default), with the constructor ``kwargs``. Here: ``cls(arch,
        **kwargs)``."""
        return cls(arch, **kwargs)

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


# --------------------------------------------------------------------------------- families
_FAMILIES: Dict[str, Type[MultiStageBackbone]] = {}


def _contract_problems(cls: Type[MultiStageBackbone]) -> List[str]:
    problems = []
    if not cls.arch_presets:
        problems.append('arch_presets is empty')
    problems += [f'arch preset {name!r} has no depths' for name, preset in
                 cls.arch_presets.items() if 'depths' not in preset]
    problems += [f'{method}() is not implemented' for method in
                 ('stem_parts', 'stage_parts', 'token_mixers')
                 if getattr(cls, method) is getattr(MultiStageBackbone, method)]
    if cls.default_implementation not in cls.implementations:
        problems.append(f'default_implementation {cls.default_implementation!r} is not one of '
                        f'implementations {list(cls.implementations)}')
    for label, names, known in (('gpu_implementations', cls.gpu_implementations,
                                 cls.implementations),
                                ('main_archs', cls.main_archs, cls.arch_presets)):
        unknown = [n for n in names if n not in known]
        if unknown:
            problems.append(f'{label} {unknown} are not among {list(known)}')
    if not cls.size_modes:
        problems.append('size_modes is empty')
    problems += [f'attention_adapters[{kind!r}] is not an AttentionAdapter for an nn.Module '
                 f'class' for kind, adapter in cls.attention_adapters.items()
                 if not (isinstance(kind, type) and issubclass(kind, nn.Module)
                         and isinstance(adapter, AttentionAdapter))]
    problems += [f'official_classifier_keys maps {old!r} to {new!r}, outside the classifier\'s '
                 f'backbone. and head. parts' for old, new in cls.official_classifier_keys.items()
                 if not (isinstance(old, str) and old.endswith('.') and isinstance(new, str)
                         and new.startswith(('backbone.', 'head.')) and new.endswith('.'))]
    return problems


def register_family(cls: Type[MultiStageBackbone]) -> Type[MultiStageBackbone]:
    """Class decorator of a backbone family: checks the family contract of
    :class:`MultiStageBackbone` (a TypeError listing what is missing), registers the class in
    the OpenMMLab ``MODELS`` registries (:func:`mmtransnext.registry.register_backbone`) and
    lists it in :func:`families`."""
    if not (isinstance(cls, type) and issubclass(cls, MultiStageBackbone)):
        raise TypeError(f'a backbone family must subclass MultiStageBackbone, got {cls!r}')
    problems = _contract_problems(cls)
    if problems:
        raise TypeError(f'{cls.__name__} does not fulfil the backbone family contract: '
                        f'{"; ".join(problems)}')
    register_backbone(cls)
    _FAMILIES[cls.__name__] = cls
    return cls


def families() -> Dict[str, Type[MultiStageBackbone]]:
    """The registered backbone families by class name, in registration order (importing
    :mod:`mmtransnext` registers the package's own)."""
    return dict(_FAMILIES)


def family_of(model: nn.Module) -> Optional[Type[MultiStageBackbone]]:
    """The registered family ``model`` is an instance of (the nearest in its class hierarchy),
    or None."""
    for cls in type(model).__mro__:
        if _FAMILIES.get(cls.__name__) is cls:
            return cls
    return None


def family_named(name: str) -> Type[MultiStageBackbone]:
    """The registered family called ``name`` (case-insensitive), or a ValueError listing them."""
    found = {key.lower(): cls for key, cls in _FAMILIES.items()}
    if not isinstance(name, str) or name.lower() not in found:
        raise ValueError(f'unknown backbone {name!r}; choose one of {sorted(found)}')
    return found[name.lower()]
