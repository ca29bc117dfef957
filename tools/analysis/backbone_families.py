"""The backbone families the analysis tools know: how to build each one for an input size.

describe_backbone.py and benchmark_backbone.py take ``--backbone NAME`` and build models through
:data:`FAMILIES`; a new family is one more :class:`Family` entry here.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Sequence, Tuple

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


def _build_transnext(arch: str, size: Size2d, mode: str, impl: dict, img_size=None) -> nn.Module:
    """TransNeXt with ImageNet (224) position tables; in interpolation mode built for
    ``img_size`` (default: 800 for inputs with a side >= 800, else 512, as the recipes)."""
    from mmtransnext.models import TransNeXt
    if img_size is None:
        img_size = 800 if max(size) >= 800 else 512
    return TransNeXt(arch, img_size=img_size, pretrain_size=224,
                     is_extrapolation=mode == 'extrapolation', **impl)


def _build_transxnet(arch: str, size: Size2d, mode: str, impl: dict, img_size=None) -> nn.Module:
    """TransXNet with the ImageNet (224) tables, resized to the input as officially."""
    from mmtransnext.models import TransXNet
    return TransXNet(arch, pretrain_size=224, **impl)


FAMILIES: Dict[str, Family] = {
    'transnext': Family(
        name='TransNeXt',
        archs=('micro', 'tiny', 'small', 'base', 'micro_aaaa'),
        default_archs=('micro', 'tiny', 'small', 'base'),
        modes=('interpolation', 'extrapolation'),
        impls={
            'reference': dict(attention_mode='reference', attn_impl='torch'),
            'fast': dict(attention_mode='fast', attn_impl='auto'),
            'fast-torch': dict(attention_mode='fast', attn_impl='torch'),
            'triton': dict(attention_mode='fast', attn_impl='triton'),
        },
        default_impl='fast',
        build=_build_transnext,
        gpu_impls=('triton', )),
    'transxnet': Family(
        name='TransXNet',
        archs=('tiny', 'small', 'base'),
        default_archs=('tiny', 'small', 'base'),
        modes=('interpolation', ),
        impls={'default': {}},
        default_impl='default',
        build=_build_transxnet),
}


def family(name: str) -> Family:
    """The :class:`Family` called ``name`` (case-insensitive), or a ValueError listing them."""
    key = name.lower()
    if key not in FAMILIES:
        raise ValueError(f'unknown backbone {name!r}; choose one of {sorted(FAMILIES)}')
    return FAMILIES[key]
