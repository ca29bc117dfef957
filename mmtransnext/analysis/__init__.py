"""Looking inside the backbone: attention maps of a query, effective receptive fields. (Kernel
launch counting and recording are developer tooling: ``tools/analysis/launches.py``,
``tools/triton_launches.py``.)"""
from ..models.backbones.base import AttentionAdapter
from .attention_maps import (attention_map, backbone_of, capture_inputs, pixel_to_token,
                             token_mixers)
from .receptive_field import (DEFAULT_THRESHOLDS, AreaRatio, area_ratios,
                              effective_receptive_field, input_gradient_map, log_scaled,
                              stage_output)

__all__ = ['AttentionAdapter', 'attention_map',
           'backbone_of', 'capture_inputs', 'pixel_to_token', 'token_mixers',
           'DEFAULT_THRESHOLDS', 'AreaRatio', 'area_ratios', 'effective_receptive_field',
           'input_gradient_map', 'log_scaled', 'stage_output']
