from .attention import AggregatedAttention, FullAttention, StageGeometry
from .conv_glu import ConvGLU
from .position_bias import PositionTable, build_position_table, cached_position_table
from .size_cache import SizeKeyedCache
from .transxnet_layers import (OSRA, DMixer, IDConv, MultiScaleFFN, PatchEmbed,
                               TransXNetBlock)

__all__ = ['AggregatedAttention', 'FullAttention', 'StageGeometry', 'ConvGLU', 'PositionTable',
           'SizeKeyedCache', 'build_position_table', 'cached_position_table', 'OSRA', 'DMixer',
           'IDConv', 'MultiScaleFFN', 'PatchEmbed', 'TransXNetBlock']
