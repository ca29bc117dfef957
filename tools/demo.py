"""The bundled demo: generate a toy dataset, train Mask R-CNN with a TransNeXt backbone on it from
scratch on the CPU, evaluate it and show where the results are. No download, a few minutes.

    python tools/demo.py                      # data/generated/shapes_coco, work_dirs/demo
    python tools/demo.py --iters 60 --work-dir /tmp/demo

Steps: write the generated COCO-format set (300 train / 50 val 128x128 images of squares,
circles and triangles; skipped when present) -> tools/train.py with
configs/demo/mask-rcnn_transnext-micro_fpn_shapes-128.py -> tools/test.py on the validation
split, with the predictions drawn -> summary. Exits with status 1 if box or mask mAP stays below
``--min-map``.

    python tools/demo.py --classification     # MMPretrain: TransNeXt-Micro and TransXNet-T

``--classification`` trains, from scratch, a TransNeXt-Micro and a TransXNet-T ImageNet-style
classifier (configs/classification/demo/) on the generated 64x64 shapes (600 train / 150 val,
one square, circle or triangle per image in its class's colour, data/generated/shapes_cls), tests
each on the validation split and prints its top-1. Exits with status 1 if a top-1 stays below
``--min-top1``.
"""
import argparse
import importlib.util
import os.path as osp
import time
from types import ModuleType
from typing import Dict, List, Optional

import torch

from mmtransnext.cli import (ToolError, build_runner, cfg_options_dict, check_output_dir,
                             key_value, load_config, positive_int, run_main)

TOOLS = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(TOOLS)

DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask-rcnn_transnext-micro_fpn_shapes-128.py')
CLASSIFICATION_CONFIGS = tuple(
    osp.join(ROOT, 'configs', 'classification', 'demo', name)
    for name in ('transnext-micro_shapes-cls-64.py', 'transxnet-tiny_shapes-cls-64.py'))


def _tool(name: str) -> ModuleType:
    """tools/<name>.py as a module (``test`` would otherwise be Python's own package)."""
    spec = importlib.util.spec_from_file_location(f'mmtransnext_tools_{name}',
                                                  osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=None,
                        help=f'demo config (default: {DEMO_CONFIG}; with --classification the '
                        f'configs in configs/classification/demo/)')
    parser.add_argument('--classification', action='store_true',
                        help='the MMPretrain demo: train and test a TransNeXt-Micro and a '
                        'TransXNet-T classifier on generated shapes')
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'),
                        help='checkpoint, logs and rendered predictions (default: %(default)s)')
    parser.add_argument('--data-root', default=None,
                        help='where the generated set is (default: the config\'s, '
                        'data/generated/shapes_coco/ under the current directory)')
    parser.add_argument('--iters', type=positive_int, default=None,
                        help='training iterations (default: the config\'s)')
    parser.add_argument('--min-map', type=float, default=0.5,
                        help='box and mask mAP@[.5:.95] the run must reach (default: 0.5)')
    parser.add_argument('--min-top1', type=float, default=80.0,
                        help='--classification: top-1 (%%) each classifier must reach (default: '
                        '80; chance is 33.3)')
    parser.add_argument('--cfg-options', nargs='+', type=key_value, default=[],
                        metavar='KEY=VALUE',
                        help='override entries of the demo config(s), as for tools/train.py, '
                        'e.g. model.backbone.attn_impl=torch (the demo\'s own settings, '
                        '--iters, --data-root and no validation while training, apply after)')
    parser.add_argument('--threads', type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core); on a "
                        'machine busy with other work, 1 avoids threads waiting on each other')
    return parser.parse_args(argv)


def _data_options(data_root: Optional[str], phase: str) -> List[str]:
    """--cfg-options pointing the ``phase`` ('train' or 'test') dataloader at ``data_root``."""
    if not data_root:
        return []
    root = data_root.rstrip('/') + '/'
    options = [f'{phase}_dataloader.dataset.data_root={root}']
    if phase == 'test':
        options.append(f'test_evaluator.ann_file={root}annotations/instances_val.json')
    return options


def classify(args: argparse.Namespace) -> Dict[str, float]:
    """The --classification demo: train and test each config; top-1 (%) and seconds per model."""
    from mmtransnext.datasets import ensure_shapes_cls
    check_output_dir(args.work_dir, '--work-dir')
    if args.data_root:
        check_output_dir(args.data_root, '--data-root')
    results, lines = {}, []
    for config in ([args.config] if args.config else CLASSIFICATION_CONFIGS):
        start = time.perf_counter()
        cfg = load_config(config, cfg_options_dict(args.cfg_options))
        name = osp.splitext(osp.basename(config))[0]
        cfg.work_dir = osp.join(args.work_dir, name)
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if args.data_root:
                cfg[loader].dataset.data_root = args.data_root
        dataset = cfg.train_dataloader.dataset
        print(f'[demo] dataset: {ensure_shapes_cls(dataset.data_root, **dataset.generator)}',
              flush=True)
        if args.iters:
            cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = args.iters
            cfg.default_hooks.checkpoint.interval = args.iters
            cfg.param_scheduler[-1].end = args.iters
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # tested once, below
        runner = build_runner(cfg)
        runner.train()
        train_time = time.perf_counter() - start
        top1 = float(runner.test()['accuracy/top1'])
        backbone = cfg.model.backbone
        results[name] = top1
        results[f'{name}_seconds'] = time.perf_counter() - start
        lines.append(f'  {backbone.type}-{backbone.arch}: top-1 {top1:.1f}% on '
                     f'{len(runner.test_dataloader.dataset)} validation images after '
                     f'{runner.iter} iterations x {cfg.train_dataloader.batch_size} images '
                     f'({train_time / 60:.1f} min training, {torch.get_num_threads()} torch thread(s))')
    print('\n' + '=' * 72)
    print('Classifiers trained from scratch on generated shapes (3 classes, chance 33.3%)')
    print('\n'.join(lines))
    print('=' * 72)
    low = {k: v for k, v in results.items() if not k.endswith('_seconds') and v < args.min_top1}
    if low:
        raise ToolError(f'the demo did not reach top-1 >= {args.min_top1}: '
                        + ', '.join(f'{k} {v:.1f}' for k, v in low.items()))
    return results


def main(argv=None) -> Dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.classification:
        return classify(args)
    args.config = args.config or DEMO_CONFIG
    start = time.perf_counter()
    cfg = load_config(args.config, cfg_options_dict(args.cfg_options))
    check_output_dir(args.work_dir, '--work-dir')
    if args.data_root:
        check_output_dir(args.data_root, '--data-root')
    data_root = args.data_root or cfg.train_dataloader.dataset.data_root
    from mmtransnext.datasets import ensure_shapes_coco
    generator = cfg.train_dataloader.dataset.get('generator') or {}
    print(f'[demo] dataset: {ensure_shapes_coco(data_root, **generator)}', flush=True)

    # No validation during training: the test below evaluates the final checkpoint.
    train_options = args.cfg_options + _data_options(args.data_root, 'train') + [
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']
    if args.iters:
        train_options += [f'train_cfg.max_iters={args.iters}',
                          f'default_hooks.checkpoint.interval={args.iters}',
                          f'param_scheduler.1.end={args.iters}']
    train_start = time.perf_counter()
    runner = _tool('train').main([args.config, '--work-dir', args.work_dir,
                                  '--cfg-options', *train_options])
    train_time = time.perf_counter() - train_start
    iters = runner.iter
    checkpoint = osp.join(runner.work_dir, f'iter_{iters}.pth')

    show_dir = osp.join(runner.work_dir, 'predictions')
    test_start = time.perf_counter()
    test_argv = [args.config, checkpoint, '--work-dir', args.work_dir, '--show-dir', show_dir]
    test_options = args.cfg_options + _data_options(args.data_root, 'test')
    if test_options:
        test_argv += ['--cfg-options', *test_options]
    metrics = _tool('test').main(test_argv)
    test_time = time.perf_counter() - test_start

    box, mask = metrics['coco/bbox_mAP'], metrics['coco/segm_mAP']
    total = time.perf_counter() - start
    first_image = osp.join(show_dir, '000000.jpg')
    print('\n' + '=' * 72)
    print(f'TransNeXt-Micro Mask R-CNN, trained from scratch on {data_root}')
    print(f'  training:   {iters} iterations x {cfg.train_dataloader.batch_size} images in '
          f'{train_time / 60:.1f} min ({torch.get_num_threads()} CPU threads)')
    print(f'  validation: box mAP {box:.3f}   mask mAP {mask:.3f}   '
          f'(mAP@[.5:.95], {test_time:.0f} s)')
    print(f'  checkpoint: {osp.abspath(checkpoint)}')
    print(f'  prediction: {osp.abspath(first_image)} (all validation images in that folder)')
    print(f'  total time: {total / 60:.1f} min')
    print('=' * 72)
    if min(box, mask) < args.min_map:
        raise ToolError(f'the demo did not reach box and mask mAP >= {args.min_map} '
                        f'(box {box:.3f}, mask {mask:.3f})')
    return dict(bbox_mAP=box, segm_mAP=mask, train_seconds=train_time, total_seconds=total)


if __name__ == '__main__':
    run_main(main)
