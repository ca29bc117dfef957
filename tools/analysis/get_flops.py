"""Parameters and FLOPs of a config's model (backbone and whole model) at an input size.

    python tools/analysis/get_flops.py configs/mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py
    python tools/analysis/get_flops.py CONFIG --shape 512 512

FLOPs are counted by mmengine's analyzer, which counts one multiply-add as one FLOP (what papers
call FLOPs, i.e. MACs), plus rules for scaled-dot-product attention and TransNeXt's compiled
sliding-window ops. Any backbone a config builds is measured (TransNeXt, TransXNet). The whole
model runs in ``mode='tensor'`` (no post-processing); operators without a rule (e.g. mmcv's
RoIAlign and deformable attention, element-wise ops) are not counted and are listed in the log.
In interpolation mode TransNeXt also evaluates its position-bias MLP on the tables built for
``img_size`` at every forward, which is counted; TransXNet's bicubic resizing of its tables is
not.
"""
import argparse
import os.path as osp
from typing import Dict, List, Tuple

import torch
from torch import nn

from mmtransnext.cli import (ToolError, is_tta_model, library_of, load_config, positive_int,
                             run_main)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('--shape', type=positive_int, nargs='+', default=None, metavar='SIZE',
                        help='input H W (or one value for both); default 1280x800 for mmdet, '
                        '512x512 for mmseg configs')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    return parser.parse_args(argv)


class _TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-input module for the analyzer."""

    def __init__(self, model: nn.Module, data_samples: list) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.model(inputs, self.data_samples, mode='tensor')


def _data_samples(library: str, height: int, width: int) -> list:
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1., 1.), flip=False)
    if library == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    from mmseg.structures import SegDataSample
    return [SegDataSample(metainfo=meta)]


def _window_op_flops(reduced_input: int):
    """FLOP rule of a sliding-window op: output elements x the reduced dimension of an input
    (``qk``: the head dimension of q; ``av``: the window length of the attention weights)."""
    from mmengine.analysis.jit_handles import get_shape

    def handle(inputs, outputs) -> int:
        out = get_shape(outputs[0])
        return int(torch.tensor(out).prod()) * get_shape(inputs[reduced_input])[-1]
    return handle


def _sdpa_flops(inputs, outputs) -> int:
    """``scaled_dot_product_attention``: the two matmuls, q @ k^T and weights @ v."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = int(torch.tensor(q[:-2]).prod()) if len(q) > 2 else 1
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _pooled_attention_flops(inputs, outputs) -> int:
    """The fast path's chunked pooled attention: q @ k^T and weights @ v, as SDPA."""
    return _sdpa_flops(inputs, outputs)


def _cpb_grid_flops(inputs, outputs) -> int:
    """The position-bias MLP ``fc2(relu(fc1(coords)))`` over every table coordinate."""
    from mmengine.analysis.jit_handles import get_shape
    coords, weight1, _, weight2 = (get_shape(x) for x in inputs[:4])
    return coords[0] * weight1[0] * (coords[1] + weight2[0])


def _gelu_gate_linear_flops(inputs, outputs) -> int:
    """ConvGLU's ``fc2(GELU(conv) * value)``: the ``fc2`` matmul."""
    from mmengine.analysis.jit_handles import get_shape
    conv, _, weight = (get_shape(x) for x in inputs[:3])
    return int(torch.tensor(conv).prod()) * weight[0]


#: Rules for ops mmengine's analyzer does not know (the SDPA variants take q, k, v first; the
#: fast path's autograd functions appear as ``prim::PythonOp.<name>``).
EXTRA_HANDLES = {
    **{f'aten::{name}': _sdpa_flops for name in (
        'scaled_dot_product_attention', '_scaled_dot_product_flash_attention_for_cpu',
        '_scaled_dot_product_flash_attention', '_scaled_dot_product_efficient_attention',
        '_scaled_dot_product_cudnn_attention')},
    'mmtransnext::sliding_window_qk': _window_op_flops(0),
    'mmtransnext::sliding_window_av': _window_op_flops(0),
    'prim::PythonOp._PooledAttention': _pooled_attention_flops,
    'prim::PythonOp._CPBGrid': _cpb_grid_flops,
    'prim::PythonOp._GeluGateLinear': _gelu_gate_linear_flops,
}


def complexity(module: nn.Module, inputs: torch.Tensor) -> Tuple[int, int]:
    """(FLOPs, parameters) of ``module(inputs)`` at inference (no autograd)."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(module, (inputs, )).set_op_handle(**EXTRA_HANDLES)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        flops = int(analyzer.total())
    return flops, sum(p.numel() for p in module.parameters())


def measure(cfg, library: str, height: int, width: int) -> List[Dict[str, object]]:
    """Rows ``{part, params, flops}`` for the backbone and the whole model."""
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    if is_tta_model(cfg.model):
        model = model.module
    model.eval()
    inputs = torch.randn(1, 3, height, width)
    rows = []
    with torch.no_grad():
        flops, params = complexity(model.backbone, inputs)
        rows.append(dict(part=f'backbone ({type(model.backbone).__name__})', params=params,
                         flops=flops))
        flops, _ = complexity(_TensorForward(model, _data_samples(library, height, width)),
                              inputs)
        rows.append(dict(part=f'whole model ({type(model).__name__})',
                         params=sum(p.numel() for p in model.parameters()), flops=flops))
    return rows


def main(argv=None) -> List[Dict[str, object]]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    library = library_of(cfg, args.config)
    shape = args.shape or ([800, 1280] if library == 'mmdet' else [512, 512])
    if len(shape) == 1:
        shape = shape * 2
    if len(shape) != 2:
        raise ToolError(f'--shape takes H W or one size, got {shape}')
    height, width = shape
    rows = measure(cfg, library, height, width)
    print(f'{osp.basename(args.config)}: input 1x3x{height}x{width}')
    header = f"{'part':<44}{'params (M)':>12}{'FLOPs (G)':>12}"
    print(header)
    print('-' * len(header))
    for row in rows:
        print(f"{row['part']:<44}{row['params'] / 1e6:>12.2f}{row['flops'] / 1e9:>12.2f}")
    return rows


if __name__ == '__main__':
    run_main(main)
