"""What the command-line tools (``tools/``) share, by concern: loading a config, checking the
files a run needs before it starts, building the Runner or a backbone, launching (distributed,
without CUDA too), argparse types, images.

Everything a run needs from the file system (config, dataset files, pretrained and runner
checkpoints) is checked before the Runner starts, so that a missing or wrong file is reported by
name (:class:`ToolError`, printed as one line by :func:`run_main`) instead of by a traceback from
deep inside the Runner.
"""
from .args import (add_fixed_pool_size_flag, add_non_finite_flag, cfg_options_dict, image_size,
                   key_value, non_negative_int, positive_float, positive_int)
from .backbone import build_backbone, split_models
from .checkpoints import (MMENGINE_PREFIXES, allow_non_finite, check_checkpoint_fits,
                          check_pretrained, read_checkpoint_arg)
from .config import (LIBRARIES, apply_fixed_pool_size, backbone_config, is_tta_model,
                     library_of, load_config, resolve_config_path)
from .data import check_data
from .errors import ToolError
from .images import demo_image, image_tensor, input_normalization, read_image, save_figure
from .launch import (adapt_to_device, close_distributed, first_slurm_node, init_distributed,
                     run_main, slurm_environment)
from .paths import check_file, check_output_dir, check_output_file
from .runner import build_runner, default_work_dir

__all__ = [
    'LIBRARIES', 'MMENGINE_PREFIXES', 'ToolError', 'adapt_to_device', 'add_fixed_pool_size_flag',
    'add_non_finite_flag', 'allow_non_finite', 'apply_fixed_pool_size', 'backbone_config',
    'build_backbone', 'build_runner', 'cfg_options_dict', 'check_checkpoint_fits', 'check_data',
    'check_file', 'check_output_dir', 'check_output_file', 'check_pretrained',
    'close_distributed', 'default_work_dir', 'demo_image', 'first_slurm_node', 'image_size',
    'image_tensor', 'init_distributed', 'input_normalization', 'is_tta_model', 'key_value',
    'library_of', 'load_config', 'non_negative_int', 'positive_float', 'positive_int',
    'read_checkpoint_arg', 'read_image', 'resolve_config_path', 'run_main', 'save_figure',
    'slurm_environment', 'split_models'
]
