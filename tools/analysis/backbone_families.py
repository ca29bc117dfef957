"""The backbone families the analysis tools know: how to build each one for an input size.

describe_backbone.py and benchmark_backbone.py take ``--backbone NAME`` and build models through
:data:`FAMILIES`, one :class:`Family` per registered family
(:func:`mmtransnext.models.backbones.families`), read from the family contract of
:class:`~mmtransnext.models.backbones.base.MultiStageBackbone`; a new family appears here once
it is registered.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Sequence, Tuple, Type

from torch import nn

Size2d = Tuple[int, int]


@dataclass(frozen=True)
class Family:
    """How the tools build one backbone family.

    Attributes:
        name: the class name (as in configs).
        archs: preset names, smallest first.
        default_archs: what describe_backbone shows by default.
        modes: position-bias modes for an input size other than the pretraining one.
        impls: implementations to compare, name -> constructor keywords; the one called
            'reference' (if any) is what speed-ups are measured against.
        default_impl: the implementation a config gets.
        gpu_impls: those of ``impls`` whose kernels run only on a GPU (here in Triton's
            interpreter, far too slow to time): benchmark_backbone.py reports their launches
            and memory, not their time.
        build: ``build(arch, size, mode, impl_kwargs, img_size)`` -> the backbone for an
            ``size`` input (``img_size``: the training size a mode may need, None for the
            family's default for ``size``).
    """
    name: str
    archs: Sequence[str]
    default_archs: Sequence[str]
    modes: Sequence[str]
    impls: Dict[str, dict]
    default_impl: str
    build: Callable[..., nn.Module] = field(repr=False)
    gpu_impls: Sequence[str] = ()

    @classmethod
    def of(cls, backbone: Type) -> 'Family':
        """The tools' view of a registered backbone class."""
        def build(arch: str, size: Size2d, mode: str, impl: dict, img_size=None) -> nn.Module:
            return backbone.for_input_size(arch, size, mode, img_size, **impl)

        archs = tuple(backbone.arch_presets)
        return cls(name=backbone.__name__, archs=archs,
                   default_archs=tuple(backbone.main_archs) or archs,
                   modes=tuple(backbone.size_modes), impls=dict(backbone.implementations),
                   default_impl=backbone.default_implementation, build=build,
                   gpu_impls=tuple(backbone.gpu_implementations))


def _registered() -> Dict[str, Family]:
    from mmtransnext.models.backbones import families
    return {name.lower(): Family.of(backbone) for name, backbone in families().items()}


#: Every registered family by lower-case class name.
FAMILIES: Dict[str, Family] = _registered()


def family(name: str) -> Family:
    """The :class:`Family` called ``name`` (case-insensitive), or a ValueError listing them."""
    key = name.lower()
    if key not in FAMILIES:
        raise ValueError(f'unknown backbone {name!r}; choose one of {sorted(FAMILIES)}')
    return FAMILIES[key]
