"""Looking inside the backbone: attention maps of a query, effective receptive fields, kernel
launches."""
from ..models.backbones.base import AttentionAdapter
from .attention_maps import (attention_map, backbone_of, capture_inputs, pixel_to_token,
                             token_mixers)
from .launches import (DEFAULT_GPU_MEMORY, LaunchCount, LaunchCounter, count_launches,
                       first_aggregated_attention, triton_kernel_counters)
from .receptive_field import (DEFAULT_THRESHOLDS, AreaRatio, area_ratios,
                              effective_receptive_field, input_gradient_map, log_scaled,
                              stage_output)

__all__ = ['AttentionAdapter', 'attention_map',
           'backbone_of', 'capture_inputs', 'pixel_to_token', 'token_mixers',
           'DEFAULT_THRESHOLDS', 'AreaRatio', 'area_ratios', 'effective_receptive_field',
           'input_gradient_map', 'log_scaled', 'stage_output', 'DEFAULT_GPU_MEMORY',
           'LaunchCount', 'LaunchCounter', 'count_launches', 'first_aggregated_attention',
           'triton_kernel_counters']
