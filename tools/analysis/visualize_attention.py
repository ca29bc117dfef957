"""Draw where a query attends, over the image: TransNeXt's foveal window and peripheral pooled
keys, or the reduced-map keys of TransXNet's OSRA.

    python tools/analysis/visualize_attention.py CONFIG [CHECKPOINT] --point center --out vis
    python tools/analysis/visualize_attention.py CONFIG CKPT --image img.jpg --point 40 60 \\
        --point 100 20 --stage 1 --block 0 --out vis

For each point, two PNGs in --out:

- ``attention_s{S}b{B}_y{Y}x{X}.png``: the input, then one panel per head and their mean. The
  weight of each window key is drawn on the pixels of its token (outlined), the weight of each
  pooled key over the region it pools, on one logarithmic colour scale (they are one softmax);
  the title gives the share of the softmax on the window ("fovea") and on the pooled keys
  ("periphery"). Full attention (TransNeXt's last stage, 0-based stage 3) draws every key on
  its own token; TransXNet's OSRA has no window, and each key of its reduced map is drawn over
  an even share of the map (its strided conv's window, up to the overlap).
- ``attention_s{S}_blocks_y{Y}x{X}.png``: the mean over heads (or ``--head``) in every block of
  the stage.

The maps come from :func:`mmtransnext.analysis.attention_map`. The learnable-token weights,
added to the window weights after the softmax, are not drawn (they are in the API's result).
Without --image, validation image 0 of the bundled demo data is used. Without a checkpoint
the model has random weights.
"""
import argparse
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmtransnext.cli import (ToolError, build_backbone, check_output_dir, demo_image, image_tensor,
                             load_config, non_negative_int, positive_int, read_image, run_main,
                             save_figure, split_models)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', nargs='+', metavar='CONFIG [CHECKPOINT]',
                        help='config (mmdet / mmseg, or mmdet::/mmseg:: path) and optionally a '
                        'checkpoint of its model or backbone')
    parser.add_argument('--image', help='image file (default: a bundled demo image)')
    parser.add_argument('--size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='resize the image to H W first (default: its own size)')
    parser.add_argument('--point', nargs='+', action='append', metavar='Y X',
                        help="query pixel(s): 'center', or Y X pairs; may be repeated "
                        '(default: center)')
    parser.add_argument('--stage', type=non_negative_int, default=0, help='0-based stage (default 0)')
    parser.add_argument('--block', type=non_negative_int, default=None,
                        help="0-based block of the stage (default: the stage's last)")
    parser.add_argument('--head', type=non_negative_int, default=None,
                        help='draw only this head (default: every head and their mean)')
    parser.add_argument('--out', default=osp.join('work_dirs', 'attention'),
                        help='output directory (default: %(default)s)')
    parser.add_argument('--dpi', type=positive_int, default=100, help='figure resolution (default 100)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    return parser.parse_args(argv)


def parse_points(groups: Optional[List[List[str]]], size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """``--point`` values as (y, x) pixels of an image of ``size``."""
    points = []
    for group in groups or [['center']]:
        values = list(group)
        while values:
            if values[0].lower() in ('center', 'centre'):
                points.append((size[0] // 2, size[1] // 2))
                values.pop(0)
                continue
            if len(values) < 2:
                raise ToolError(f"--point takes 'center' or Y X pairs, got {group}")
            try:
                y, x = int(values[0]), int(values[1])
            except ValueError:
                raise ToolError(f"--point takes 'center' or integer Y X pairs, "
                                f'got {group}') from None
            if not (0 <= y < size[0] and 0 <= x < size[1]):
                raise ToolError(f'--point {y} {x} lies outside the {size[0]}x{size[1]} '
                                f'image')
            points.append((y, x))
            values = values[2:]
    return points


# ------------------------------------------------------------------------------- drawing
def _bins(length: int, cells: int) -> List[Tuple[int, int]]:
    """Token ranges adaptive average pooling averages into each of ``cells`` cells."""
    return [(i * length // cells, -(-(i + 1) * length // cells)) for i in range(cells)]


def _pixels(token_range: Tuple[int, int], tokens: int, pixels: int) -> Tuple[int, int]:
    return token_range[0] * pixels // tokens, -(-token_range[1] * pixels // tokens)


def weight_image(maps: Dict[str, torch.Tensor], image_size: Tuple[int, int],
                 head: Optional[int]) -> Tuple[np.ndarray, Optional[Tuple[int, int, int, int]]]:
    """Per-pixel weight of one head (or the mean over heads, ``head`` None) and the window's
    pixel box ``(y0, y1, x0, x1)`` (None for full attention).

    Pooled keys paint the region they pool (where regions overlap, their mean); window keys
    paint their token's pixels over that.
    """
    def pick(t: torch.Tensor) -> np.ndarray:
        return (t.mean(0) if head is None else t[head]).double().cpu().numpy()

    (height, width), (fh, fw) = image_size, maps['feature_size'].tolist()
    pooled = pick(maps['pooled'])
    total = np.zeros(image_size)
    count = np.zeros(image_size)
    for j, rows in enumerate(_bins(fh, pooled.shape[0])):
        y0, y1 = _pixels(rows, fh, height)
        for i, cols in enumerate(_bins(fw, pooled.shape[1])):
            x0, x1 = _pixels(cols, fw, width)
            total[y0:y1, x0:x1] += pooled[j, i]
            count[y0:y1, x0:x1] += 1
    canvas = total / np.maximum(count, 1)
    if 'window' not in maps:
        return canvas, None
    window = pick(maps['window'])
    radius = window.shape[0] // 2
    qy, qx = maps['query'].tolist()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ty, tx = qy + dy, qx + dx
            if 0 <= ty < fh and 0 <= tx < fw:
                y0, y1 = _pixels((ty, ty + 1), fh, height)
                x0, x1 = _pixels((tx, tx + 1), fw, width)
                canvas[y0:y1, x0:x1] = window[dy + radius, dx + radius]
    box_y = _pixels((max(0, qy - radius), min(fh, qy + radius + 1)), fh, height)
    box_x = _pixels((max(0, qx - radius), min(fw, qx + radius + 1)), fw, width)
    return canvas, (*box_y, *box_x)


def _shares(maps: Dict[str, torch.Tensor], head: Optional[int]) -> str:
    def share(t: torch.Tensor) -> float:
        per_head = t.flatten(1).sum(1)
        return float(per_head.mean() if head is None else per_head[head])
    if 'window' not in maps:
        rows, cols = maps['pooled'].shape[1:]
        if [rows, cols] == maps['feature_size'].tolist():
            return f'full attention, {rows}x{cols} keys'
        return f'{rows}x{cols} reduced keys, no window'
    return f"fovea {share(maps['window']):.2f} | periphery {share(maps['pooled']):.2f}"


def draw_panels(image_rgb: np.ndarray, panels: Sequence[Tuple[str, Dict[str, torch.Tensor],
                                                                Optional[int]]],
                point: Tuple[int, int], title: str, path: str, columns: int,
                dpi: int = 100) -> None:
    """Write a figure of the image and ``panels`` (caption, maps, head) over it to ``path``."""
    import textwrap

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    size = image_rgb.shape[:2]
    drawn = [(caption, *weight_image(maps, size, head), _shares(maps, head))
             for caption, maps, head in panels]
    peak = max(float(canvas.max()) for _, canvas, _, _ in drawn)
    norm = LogNorm(vmin=peak * 1e-3, vmax=peak)
    grey = image_rgb.mean(-1, keepdims=True).repeat(3, -1) / 255
    columns = min(columns, len(drawn) + 1)
    rows = -(-(len(drawn) + 1) // columns)
    scale = 2.6 * max(1., size[1] / size[0]) ** 0.5
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(scale * columns + 0.9, scale * size[0] / size[1] * rows
                                      + 1.0))
    for ax in axes.flat:
        ax.axis('off')
    axes.flat[0].imshow(image_rgb)
    axes.flat[0].plot(point[1], point[0], marker='+', color='cyan', markersize=9, mew=1.5)
    axes.flat[0].set_title(f'input, query ({point[0]}, {point[1]})', fontsize=8)
    image = None
    for ax, (caption, canvas, box, shares) in zip(axes.flat[1:], drawn):
        ax.imshow(grey)
        image = ax.imshow(np.clip(canvas, norm.vmin, None), cmap='inferno', norm=norm,
                          alpha=0.6)
        if box is not None:
            y0, y1, x0, x1 = box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor='white', linewidth=1))
        ax.plot(point[1], point[0], marker='+', color='cyan', markersize=9, mew=1.5)
        ax.set_title(f'{caption}\n{shares}', fontsize=8)
    fig.suptitle('\n'.join(textwrap.wrap(title, int(11 * scale * columns))), fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    bar = fig.add_axes((0.93, 0.15, 0.015, 0.65))
    fig.colorbar(image, cax=bar).set_label('attention weight (log scale)', fontsize=8)
    bar.tick_params(labelsize=7)
    save_figure(fig, path, dpi)


# ------------------------------------------------------------------------------- main
def main(argv=None) -> List[str]:
    """Write the figures; returns their paths."""
    from mmtransnext.analysis import attention_map, token_mixers
    args = parse_args(argv)
    (config, checkpoint), *rest = split_models(args.model)
    if rest:
        raise ToolError('give one CONFIG [CHECKPOINT]')
    check_output_dir(args.out, '--out')
    cfg = load_config(config, args.cfg_options)
    torch.manual_seed(0)  # the same random weights every run when there is no checkpoint
    backbone, _ = build_backbone(cfg, config, checkpoint)
    try:
        mixers = token_mixers(backbone)
    except ValueError as err:
        raise ToolError(f'{config}: {err}') from err
    if not 0 <= args.stage < len(mixers):
        raise ToolError(f'--stage {args.stage}: the backbone has {len(mixers)} stages '
                        f'(0-based)')
    depth = len(mixers[args.stage])
    block = depth - 1 if args.block is None else args.block
    if not 0 <= block < depth:
        raise ToolError(f'--block {block}: stage {args.stage} has {depth} blocks')
    image_rgb = (read_image(args.image, args.size) if args.image
                 else demo_image(0, args.size))
    inputs = image_tensor(image_rgb, cfg)
    size = tuple(image_rgb.shape[:2])
    points = parse_points(args.point, size)
    name = osp.splitext(osp.basename(config.split('::')[-1]))[0]
    source = args.image or 'demo image'

    def maps_at(point: Tuple[int, int], b: int) -> Dict[str, torch.Tensor]:
        try:
            return attention_map(backbone, inputs, point, args.stage, b)
        except ValueError as err:
            raise ToolError(str(err)) from err

    first = maps_at(points[0], block)  # the head count, checked before anything is written
    heads = first['pooled'].shape[0]
    if args.head is not None and args.head >= heads:
        raise ToolError(f'--head {args.head}: stage {args.stage} has {heads} heads')
    os.makedirs(args.out, exist_ok=True)
    written = []
    for y, x in points:
        def maps_of(b: int) -> Dict[str, torch.Tensor]:
            return maps_at((y, x), b)

        maps = first if (y, x) == points[0] else maps_of(block)
        chosen = [args.head] if args.head is not None else [*range(heads), None]
        panels = [('mean of heads' if h is None else f'head {h}', maps, h) for h in chosen]
        where = f'query ({y}, {x}) = token {tuple(maps["query"].tolist())}'
        path = osp.join(args.out, f'attention_s{args.stage}b{block}_y{y}x{x}.png')
        draw_panels(image_rgb, panels, (y, x),
                    f'{name}: stage {args.stage}, block {block}, {where} of '
                    f'{tuple(maps["feature_size"].tolist())}; {source}', path,
                    columns=6, dpi=args.dpi)
        written.append(path)

        label = 'mean of heads' if args.head is None else f'head {args.head}'
        panels = [(f'block {b}', maps if b == block else maps_of(b), args.head)
                  for b in range(depth)]
        path = osp.join(args.out, f'attention_s{args.stage}_blocks_y{y}x{x}.png')
        draw_panels(image_rgb, panels, (y, x),
                    f'{name}: stage {args.stage}, every block ({label}), {where}', path,
                    columns=6, dpi=args.dpi)
        written.append(path)
    for path in written:
        print(f'wrote {path}')
    return written


if __name__ == '__main__':
    run_main(main)
