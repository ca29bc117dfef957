"""Train a detector (mmdet config) or segmentor (mmseg config) with a TransNeXt backbone.

    python tools/train.py configs/mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py
    python tools/train.py CONFIG --work-dir work_dirs/x --cfg-options train_dataloader.batch_size=4
    python tools/train.py CONFIG --resume                  # latest checkpoint of the work dir
    python tools/train.py CONFIG --fixed-pool-size 7       # TransNeXt's linear mode
    bash tools/dist_train.sh CONFIG 8                      # 8 processes (torchrun)

The library is the config's ``default_scope``. Dataset files, the backbone's pretrained
checkpoint and ``--resume`` / ``load_from`` files are checked before training starts.
"""
import argparse
import os

from mmtransnext.cli import (MMENGINE_PREFIXES, ToolError, adapt_to_device,
                             add_fixed_pool_size_flag, add_non_finite_flag, allow_non_finite,
                             apply_fixed_pool_size, build_runner, check_data, check_output_dir,
                             check_pretrained, default_work_dir, init_distributed, is_tta_model,
                             load_config, read_checkpoint_arg, run_main)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: '
                        'work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='PATH',
                        help='resume from PATH, or without PATH from the latest checkpoint in '
                        'the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (processes x batch size) / auto_scale_lr base')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_epochs=1')
    add_fixed_pool_size_flag(parser)
    add_non_finite_flag(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def setup_train_config(args: argparse.Namespace):
    """The config of a training run: options applied, files checked, adapted to the device."""
    import torch
    cfg = load_config(args.config, args.cfg_options)
    apply_fixed_pool_size(cfg, args.fixed_pool_size, args.config)
    if is_tta_model(cfg.model):
        raise ToolError(
            f'{args.config} is an evaluation config (test-time augmentation, model '
            f'{cfg.model.type}); train with the single-scale config it derives from and test '
            f'the checkpoint with this one')
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    check_output_dir(cfg.work_dir, '--work-dir')

    if args.amp:
        if not torch.cuda.is_available():
            raise ToolError('--amp needs a CUDA GPU')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ToolError(f'--auto-scale-lr: {args.config} has no '
                            f'auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        # read here (corrupt file, non-finite weights) before the Runner writes the work dir
        read_checkpoint_arg(args.resume, '--resume checkpoint')
        cfg.resume = True
        cfg.load_from = args.resume
    elif cfg.get('load_from') and not str(cfg.load_from).startswith(MMENGINE_PREFIXES):
        read_checkpoint_arg(cfg.load_from, 'load_from checkpoint')

    loaders = ['train_dataloader']
    if cfg.get('val_cfg') and cfg.get('val_dataloader') and cfg.get('val_evaluator'):
        loaders.append('val_dataloader')
    check_data(cfg, args.config, loaders)
    # Weights are initialised (init_cfg) before load_from / resume, so the file is needed too.
    check_pretrained(cfg, args.config)
    notes = adapt_to_device(cfg, distributed=args.launcher != 'none')
    return cfg, notes


def main(argv=None):
    """Train; returns the Runner (for tools/demo.py and the tests)."""
    args = parse_args(argv)
    with allow_non_finite(args.allow_non_finite):  # the whole run reads checkpoints
        cfg, notes = setup_train_config(args)
        init_distributed(args.launcher, cfg)
        runner = build_runner(cfg)
        for note in notes:
            runner.logger.warning(note)
        runner.train()
        return runner


if __name__ == '__main__':
    run_main(main)
