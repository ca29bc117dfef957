"""Constructor arguments of both backbone families, as one table.

Every bad value raises a TypeError (wrong type) or ValueError (out of range) at construction,
naming the argument and the value; valid edge values construct. The arguments both families
take are listed once and run against both, so their checks cannot drift apart.
"""
import inspect
from typing import NamedTuple, Optional, Tuple

import pytest
import torch

from mmtransnext.models import TransNeXt, TransXNet
from mmtransnext.models.backbones import transnext, transxnet

NAN, INF = float('nan'), float('inf')

#: Small variants of each family (quick to build), with the function resolving their stages.
FAMILIES = {
    'TransNeXt': (TransNeXt, transnext.resolve_arch,
                  dict(arch=dict(embed_dims=[8, 16, 32, 64], num_heads=[1, 2, 2, 4],
                                 depths=[1, 1, 1, 1]), img_size=64, pretrain_size=64)),
    'TransXNet': (TransXNet, transxnet.resolve_arch,
                  dict(arch=dict(embed_dims=[16, 16, 32, 32], num_heads=[1, 1, 2, 2],
                                 num_groups=[2, 2, 2, 2], depths=[1, 1, 1, 1],
                                 mlp_ratios=[4, 4, 4, 4]),
                       pretrain_size=64)),
}


class At(NamedTuple):
    """The family's per-stage list with entry ``index`` replaced by ``value``."""
    index: int
    value: object


class Case(NamedTuple):
    arg: str
    value: object
    error: Optional[type] = None  # None: a valid edge value
    mentions: Tuple[str, ...] = ()  # text the message must hold besides arg and value


def _kwargs(family: str, case: Case) -> dict:
    _, resolve, base = FAMILIES[family]
    value = case.value
    if isinstance(value, At):
        value = list(resolve(base['arch'])[case.arg])
        value[case.value.index] = case.value.value
    return dict(base, **{case.arg: value})


def _arch(family: str, **extra) -> dict:
    return dict(FAMILIES[family][2]['arch'], **extra)


#: Arguments of both families.
SHARED = [
    Case('arch', 'huge', ValueError),
    Case('arch', 3, TypeError),
    Case('in_channels', 0, ValueError),
    Case('in_channels', True, TypeError),
    Case('in_channels', 3.0, TypeError),
    Case('out_indices', (4, ), ValueError),
    Case('out_indices', (-1, ), ValueError),
    Case('out_indices', (), ValueError),
    Case('out_indices', (1, 1), ValueError),
    Case('out_indices', (1.0, ), TypeError),
    Case('out_indices', 3, TypeError),
    Case('frozen_stages', -2, ValueError),
    Case('frozen_stages', 5, ValueError),
    Case('frozen_stages', 1.0, TypeError),
    Case('frozen_stages', None, TypeError),
    Case('drop_rate', -0.1, ValueError),
    Case('drop_rate', 1.0, ValueError),
    Case('drop_rate', NAN, ValueError),
    Case('drop_rate', '0.1', TypeError),
    Case('drop_path_rate', 1.0, ValueError, ('[0, 1)', )),
    Case('drop_path_rate', 2.0, ValueError, ('[0, 1)', )),
    Case('drop_path_rate', -0.1, ValueError),
    Case('drop_path_rate', INF, ValueError),
    Case('drop_path_rate', None, TypeError),
    Case('drop_path_rate', True, TypeError),
    Case('with_cp', 'yes', TypeError),
    Case('with_cp', 1, TypeError),
    Case('with_cp', None, TypeError),
    Case('depths', [1, 1, 1], ValueError),
    Case('depths', [], ValueError),
    Case('depths', 4, TypeError),
    Case('depths', At(2, 0), ValueError),
    Case('depths', At(2, 1.0), TypeError),
    Case('embed_dims', At(1, 0), ValueError),
    Case('embed_dims', At(1, 16.0), TypeError),
    Case('num_heads', At(0, 0), ValueError),
    Case('num_heads', At(0, 1.0), TypeError),
    Case('num_heads', At(0, 3), ValueError),  # does not divide the stage width
    Case('sr_ratios', At(0, 0), ValueError),
    Case('sr_ratios', At(0, 2.5), TypeError),
    Case('mlp_ratios', At(0, 0), ValueError),
    Case('mlp_ratios', At(0, -4), ValueError),
    Case('mlp_ratios', At(0, NAN), ValueError),
    Case('mlp_ratios', At(0, 0.1), ValueError),  # leaves the FFN too narrow
    Case('mlp_ratios', At(0, '4'), TypeError),
    Case('position_cache_size', 0, ValueError),
    Case('position_cache_size', 2.0, TypeError),
    Case('pretrain_size', 0, ValueError),
    Case('pretrain_size', (64, -1), ValueError),
    Case('pretrain_size', (64, 64, 3), ValueError),
    Case('pretrain_size', '64', TypeError),
]

#: Valid edge values of the shared arguments.
SHARED_VALID = [
    Case('in_channels', 1),
    Case('out_indices', (3, )),
    Case('out_indices', [0, 3]),
    Case('frozen_stages', -1),
    Case('frozen_stages', 4),
    Case('drop_rate', 0.0),
    Case('drop_rate', 0.999),
    Case('drop_path_rate', 0),
    Case('drop_path_rate', 0.999),
    Case('with_cp', True),
    Case('depths', (1, 2, 1, 1)),
    Case('mlp_ratios', At(0, 0.25)),  # the narrowest FFN both families build at 8 / 16 wide
    Case('position_cache_size', 1),
    Case('pretrain_size', (64, 96)),
]

ONLY = {
    'TransNeXt': [
        Case('attn_drop_rate', 1.0, ValueError),
        Case('attn_drop_rate', -0.5, ValueError),
        Case('attn_drop_rate', '0', TypeError),
        Case('img_size', 0, ValueError),
        Case('img_size', (64, ), ValueError),
        Case('img_size', 64.0, TypeError),
        Case('is_extrapolation', 'no', TypeError),
        Case('qkv_bias', 'no', TypeError),
        Case('qkv_bias', 0, TypeError),
        Case('window_size', At(0, 4), ValueError, ('odd', )),
        Case('window_size', At(0, 0), ValueError),
        Case('window_size', At(0, 3.0), TypeError),
        Case('window_size', At(3, 3), ValueError),  # a full-attention stage has no window
        Case('attn_impl', 'cuda', ValueError),
        Case('attention_mode', 'slow', ValueError),
    ],
    'TransXNet': [
        Case('norm_eval', 'yes', TypeError),
        Case('norm_eval', 1, TypeError),
        Case('num_groups', At(0, 1), ValueError),
        Case('num_groups', At(0, 2.0), TypeError),
        Case('embed_dims', At(0, 15), ValueError, ('even', )),
        Case('norm_cfg', 'BN', TypeError),
        Case('norm_cfg', dict(), ValueError, ('type', )),
        Case('norm_cfg', dict(type=3), TypeError),
        Case('norm_cfg', dict(type='BogusNorm'), ValueError, ("'BogusNorm'", "'SyncBN'")),
        Case('norm_cfg', dict(type='LN'), ValueError, ('LayerNorm', 'N, C, H, W')),
        Case('norm_cfg', dict(type='IN'), ValueError, ('InstanceNorm2d', )),
        Case('norm_cfg', dict(type='BN1d'), ValueError, ('BatchNorm1d', )),
        Case('norm_cfg', dict(type='GN'), ValueError, ('num_groups', )),
        Case('norm_cfg', dict(type='GN', num_groups=3), ValueError, ('divisible', )),
        Case('norm_cfg', dict(type='BN', colour=1), ValueError, ('colour', )),
    ],
}

ONLY_VALID = {
    'TransNeXt': [
        Case('attn_drop_rate', 0.999),
        Case('img_size', 32),  # the smallest interpolation size: 4 * 8 (stage 1) = 32
        Case('is_extrapolation', True),
        Case('qkv_bias', False),
    ],
    'TransXNet': [
        Case('norm_eval', True),
        Case('norm_cfg', dict(type='BN2d')),
        Case('norm_cfg', dict(type='SyncBN')),
        Case('norm_cfg', dict(type='GN', num_groups=1)),
        Case('norm_cfg', dict(type='GN', num_groups=2)),  # divides every width, down to 2
        Case('pretrain_size', 1),
    ],
}

#: Keys of an arch dict (not constructor arguments), checked the same way.
ARCH_KEYS = {
    'TransXNet': [
        ('layer_scale_init_value', -1e-5, ValueError),
        ('layer_scale_init_value', NAN, ValueError),
        ('layer_scale_init_value', '1e-5', TypeError),
        ('kernel_size', 4, ValueError),
        ('kernel_size', 7.0, TypeError),
        ('layer_scale_init_value', 0.0, None),
        ('kernel_size', 3, None),
    ],
}


def _cases(tables, valid: bool):
    return [
        pytest.param(family, case, id=f'{family}-{case.arg}={case.value!r}')
        for family in FAMILIES
        for case in (tables if isinstance(tables, list) else tables.get(family, []))
        if (case.error is None) == valid
    ]


def _value_text(case: Case) -> str:
    value = case.value.value if isinstance(case.value, At) else case.value
    return 'type' if isinstance(value, dict) else repr(value)


@pytest.mark.parametrize('family,case', _cases(SHARED, False) + _cases(ONLY, False))
def test_bad_argument_is_named_in_the_error(family, case):
    cls = FAMILIES[family][0]
    with pytest.raises(case.error) as info:
        cls(**_kwargs(family, case))
    message = str(info.value)
    for text in (case.arg, _value_text(case), *case.mentions):
        assert text in message, f'{text!r} missing from {message!r}'


@pytest.mark.parametrize('family,case', _cases(SHARED_VALID, True) + _cases(ONLY_VALID, True))
def test_valid_edge_value_constructs(family, case):
    cls = FAMILIES[family][0]
    model = cls(**_kwargs(family, case))
    assert isinstance(model, cls)


@pytest.mark.parametrize('family,key,value,error', [
    (family, *row) for family, rows in ARCH_KEYS.items() for row in rows
])
def test_arch_dict_values_are_checked(family, key, value, error):
    kwargs = dict(FAMILIES[family][2], arch=_arch(family, **{key: value}))
    if error is None:
        FAMILIES[family][0](**kwargs)
        return
    with pytest.raises(error, match=key):
        FAMILIES[family][0](**kwargs)


def test_optional_arch_dict_keys_take_their_defaults():
    """An arch dict may leave out the keys the docstrings call optional (TransXNet's
    ``mlp_ratios`` used to raise a KeyError)."""
    for family, (_, resolve, base) in FAMILIES.items():
        required = {'embed_dims', 'num_heads', 'depths', 'num_groups'}
        arch = {k: v for k, v in base['arch'].items() if k in required}
        assert len(resolve(arch)['mlp_ratios']) == 4, family


def test_every_shared_argument_is_a_parameter_of_both_families():
    """The shared table stays shared: its arguments exist in both constructors."""
    for cls, _, _ in FAMILIES.values():
        params = inspect.signature(cls.__init__).parameters
        assert {c.arg for c in SHARED + SHARED_VALID} <= set(params), cls.__name__


def test_group_norm_runs_where_it_used_to_fail_in_forward():
    """GN used to build and then fail in OSRA's forward (the norm was looked up as ``bn``)."""
    _, _, base = FAMILIES['TransXNet']
    model = TransXNet(**base, norm_cfg=dict(type='GN', num_groups=1)).train()
    outs = model(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2),
                                               (2, 32, 1, 1)]
    assert all(torch.isfinite(o).all() for o in outs)
