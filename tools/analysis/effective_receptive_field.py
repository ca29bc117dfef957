"""Effective receptive field of a backbone stage, as RepLKNet measures it, for any mmdet / mmseg
backbone config; several configs give side-by-side panels.

    python tools/analysis/effective_receptive_field.py CONFIG [CHECKPOINT] --demo --out erf.png
    python tools/analysis/effective_receptive_field.py \\
        configs/mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py TNX_CKPT \\
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py SWIN_CKPT \\
        --images val2017/ --num 50 --size 1024 1024 --stage 3 --out erf.png

Per image: the gradient of the stage's central output pixel (ReLU, then summed over channels,
as RepLKNet does) with respect to the input, its absolute value (``--relu``: its positive part,
exactly RepLKNet's recipe) summed over colour channels; the mean over ``--num`` images is drawn
normalised to its peak on a log colour scale. Printed (and in each panel): RepLKNet's
high-contribution area ratios, the smallest centred square holding 20/30/50/99% of the
``log10(1 + erf)`` map, as a share of the image. ``--save-npy`` also writes each mean map.
Without a checkpoint the model has random weights. Stages are 0-based (``--stage`` takes one
for all models or one per model); the backbone is built to return that stage
(``out_indices``). ``--cfg-options`` apply to every config.
"""
import argparse
import glob
import os
import os.path as osp
from typing import Dict, Iterator, List

import numpy as np
import torch

from mmtransnext.cli import (ToolError, build_backbone, check_file, check_output_file, demo_image,
                             image_tensor, load_config, non_negative_int, positive_int, read_image,
                             resolve_config_path, run_main, save_figure, split_models)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', nargs='+', metavar='CONFIG [CHECKPOINT]',
                        help='one or more configs (mmdet / mmseg, or mmdet::/mmseg:: paths), '
                        'each optionally followed by a checkpoint of its model or backbone')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', metavar='DIR', help='folder of images (sorted by name)')
    source.add_argument('--demo', action='store_true',
                        help='validation images of the bundled demo data')
    parser.add_argument('--num', type=positive_int, default=20, help='images to average (default 20)')
    parser.add_argument('--size', type=positive_int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                        help='input size the images are resized to (default 224 224)')
    parser.add_argument('--stage', type=non_negative_int, nargs='+', default=[3], metavar='K',
                        help='0-based stage: one for every model, or one per model (default 3)')
    parser.add_argument('--relu', action='store_true',
                        help="the gradient's positive part instead of its absolute value "
                        "(RepLKNet's code)")
    parser.add_argument('--labels', nargs='+', help='panel titles (default: config names)')
    parser.add_argument('--out', default='erf.png', help='output PNG (default: %(default)s)')
    parser.add_argument('--dpi', type=positive_int, default=100, help='figure resolution (default 100)')
    parser.add_argument('--save-npy', action='store_true',
                        help='also save each mean map next to --out as <out>_<i>.npy')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override entries of every config')
    return parser.parse_args(argv)


def images_rgb(args: argparse.Namespace) -> Iterator[np.ndarray]:
    """The ``--num`` input images (RGB uint8, resized to ``--size``)."""
    if args.demo:
        for i in range(args.num):
            yield demo_image(i, args.size)
        return
    files = sorted(f for f in glob.glob(osp.join(args.images, '*'))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if len(files) < args.num:
        raise ToolError(f'--images {args.images} holds {len(files)} images, --num asks '
                        f'for {args.num}')
    for path in files[:args.num]:
        yield read_image(path, args.size)


def measure(config: str, checkpoint, stage: int,
            args: argparse.Namespace) -> Dict[str, object]:
    """The mean ERF map of one model's ``stage`` and its area ratios."""
    from mmengine.utils import ProgressBar
    from mmtransnext.analysis import (area_ratios, effective_receptive_field, log_scaled,
                                      stage_output)
    cfg = load_config(config, args.cfg_options)
    torch.manual_seed(0)  # the same random weights every run when there is no checkpoint
    backbone, output = build_backbone(cfg, config, checkpoint, stage=stage)
    for param in backbone.parameters():
        param.requires_grad_(False)  # only the input's gradient is needed

    def stage_fn(image: torch.Tensor) -> torch.Tensor:
        return stage_output(backbone(image), output)

    print(f'{config}: {type(backbone).__name__}, stage {stage}, {args.num} images')
    bar = ProgressBar(args.num)
    inputs = (image_tensor(img, cfg) for img in images_rgb(args))
    try:
        erf = effective_receptive_field(stage_fn, inputs, 'relu' if args.relu else 'abs',
                                        progress=bar.update)
    except ValueError as err:
        raise ToolError(f'{config}: {err}') from err
    print()
    if not bool((erf > 0).any()):
        raise ToolError(f'{config}: the gradient is zero everywhere: no channel of the '
                        f'central output pixel of stage {stage} is positive on '
                        f'these images')
    return dict(config=config, backbone=type(backbone).__name__, stage=stage, erf=erf,
                ratios=area_ratios(log_scaled(erf)))


def draw(results: List[Dict[str, object]], labels: List[str], args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    count = len(results)
    height, width = args.size
    fig, axes = plt.subplots(1, count, squeeze=False, layout='constrained',
                             figsize=(3.2 * count + 1.2, 3.2 * height / width + 0.9))
    norm = LogNorm(vmin=1e-4, vmax=1)
    image = None
    for ax, result, label in zip(axes[0], results, labels):
        erf = result['erf'].numpy()
        image = ax.imshow(np.clip(erf / max(erf.max(), 1e-30), 1e-4, 1), cmap='magma',
                          norm=norm)
        ax.plot(width // 2, height // 2, marker='+', color='cyan', markersize=8, mew=1)
        ratios = result['ratios']
        text = '  '.join(f'{int(t * 100)}%: {r.ratio * 100:.1f}' for t, r in ratios.items())
        ax.set_title(f'{label}\nstage {result["stage"]}, {args.num} images', fontsize=8)
        ax.set_xlabel(f'area ratio (% of image) holding\n{text}', fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.8, aspect=30)
    bar.set_label('contribution / peak (log scale)', fontsize=8)
    bar.ax.tick_params(labelsize=7)
    save_figure(fig, args.out, args.dpi)


def main(argv=None) -> List[Dict[str, object]]:
    """Measure and draw; returns per model its mean map and area ratios."""
    args = parse_args(argv)
    models = split_models(args.model)
    labels = args.labels or [osp.splitext(osp.basename(c.split('::')[-1]))[0]
                             for c, _ in models]
    if len(labels) != len(models):
        raise ToolError(f'--labels gives {len(labels)} titles for {len(models)} models')
    check_output_file(args.out, '--out')
    if args.images and not osp.isdir(args.images):
        raise ToolError(f'--images: not a folder: {args.images}')
    for config, checkpoint in models:  # every file before the first long measurement
        check_file(resolve_config_path(config), 'config file')
        if checkpoint:
            check_file(checkpoint, 'checkpoint file')
    stages = args.stage * len(models) if len(args.stage) == 1 else args.stage
    if len(stages) != len(models):
        raise ToolError(f'--stage gives {len(stages)} stages for {len(models)} models '
                        f'(give one, or one per model)')
    results = [measure(config, checkpoint, stage, args)
               for (config, checkpoint), stage in zip(models, stages)]
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    draw(results, labels, args)
    print('high-contribution area ratio (smallest centred square holding t of log10(1 + erf), '
          'side in pixels, share of the image):')
    for label, result in zip(labels, results):
        cells = '  '.join(f't={t:.2f}: {r.side:>4d} px {r.ratio * 100:6.2f}%'
                          for t, r in result['ratios'].items())
        print(f'  {label} ({result["backbone"]}, stage {result["stage"]}): {cells}')
    if args.save_npy:
        stem = osp.splitext(args.out)[0]
        for i, result in enumerate(results):
            np.save(f'{stem}_{i}.npy', result['erf'].numpy())
    print(f'wrote {args.out}')
    return results


if __name__ == '__main__':
    run_main(main)
