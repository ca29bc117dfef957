from .attention import AggregatedAttention, FullAttention, StageGeometry
from .conv_glu import ConvGLU
from .position_bias import PositionTable, PositionTableCache, build_position_table
from .transxnet_layers import (OSRA, DMixer, IDConv, MultiScaleFFN, PatchEmbed,
                               TransXNetBlock)

__all__ = ['AggregatedAttention', 'FullAttention', 'StageGeometry', 'ConvGLU', 'PositionTable',
           'PositionTableCache', 'build_position_table', 'OSRA', 'DMixer', 'IDConv',
           'MultiScaleFFN', 'PatchEmbed', 'TransXNetBlock']
