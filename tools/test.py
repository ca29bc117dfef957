"""Evaluate a checkpoint of a detector (mmdet config) or segmentor (mmseg config).

    python tools/test.py configs/mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py CKPT
    python tools/test.py CONFIG CKPT --show-dir vis        # also save rendered predictions
    python tools/test.py CONFIG CKPT --tta                 # the config's tta_model/tta_pipeline
    python tools/test.py CONFIG CKPT --fixed-pool-size 7   # TransNeXt's linear mode
    bash tools/dist_test.sh CONFIG CKPT 8                  # 8 processes (torchrun)

The UperNet ``*_ms*.py`` configs already test with multi-scale + flip. The checkpoint must fit
the config's model exactly (checked before testing), and the dataset files must exist.
"""
import argparse
import os
import os.path as osp

from mmtransnext.cli import (ToolError, adapt_to_device, add_fixed_pool_size_flag,
                             add_non_finite_flag, allow_non_finite, apply_fixed_pool_size,
                             build_runner, check_checkpoint_fits, check_data, check_output_dir,
                             default_work_dir, init_distributed, is_tta_model, library_of,
                             load_config, positive_float, read_checkpoint_arg, run_main)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', help='checkpoint file (a runner checkpoint of this model)')
    parser.add_argument('--work-dir', help='where the test log goes (default: '
                        'work_dirs/<config name>)')
    parser.add_argument('--show-dir', help='save images with the predictions drawn in here')
    parser.add_argument('--show', action='store_true', help='display predictions in a window')
    parser.add_argument('--wait-time', type=positive_float, default=2,
                        help='seconds per shown image')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model / tta_pipeline")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. test_dataloader.batch_size=2')
    add_fixed_pool_size_flag(parser)
    add_non_finite_flag(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _enable_visualization(cfg, library: str, args: argparse.Namespace) -> None:
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ToolError('--show/--show-dir: the config has no default_hooks.visualization')
    hook.draw = True
    if args.show:
        hook.show = True
        hook.wait_time = args.wait_time
    if args.show_dir:
        show_dir = osp.abspath(args.show_dir)
        if library == 'mmdet':
            hook.test_out_dir = show_dir
        else:
            hook.interval = 1
            cfg.visualizer.save_dir = show_dir


def _apply_tta(cfg, config_path: str) -> None:
    if is_tta_model(cfg.model):
        return  # the config tests with augmentation already
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ToolError(f'--tta: {config_path} defines no tta_model / tta_pipeline')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def setup_test_config(args: argparse.Namespace):
    """The config of a test run: options applied and files checked.

    Returns:
        The config, notes for the log and the checkpoint's content (read and checked here,
        before the Runner writes anything).
    """
    cfg = load_config(args.config, args.cfg_options)
    apply_fixed_pool_size(cfg, args.fixed_pool_size, args.config)
    library = library_of(cfg, args.config)
    checkpoint = read_checkpoint_arg(args.checkpoint, 'checkpoint file')
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    check_output_dir(cfg.work_dir, '--work-dir')
    check_output_dir(args.show_dir, '--show-dir')
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show or args.show_dir:
        _enable_visualization(cfg, library, args)
    if args.tta:
        _apply_tta(cfg, args.config)
    check_data(cfg, args.config, ['test_dataloader'])
    notes = adapt_to_device(cfg, distributed=args.launcher != 'none')
    return cfg, notes, checkpoint


def main(argv=None) -> dict:
    """Test; returns the metrics."""
    args = parse_args(argv)
    with allow_non_finite(args.allow_non_finite):  # the whole run reads checkpoints
        cfg, notes, checkpoint = setup_test_config(args)
        init_distributed(args.launcher, cfg)
        runner = build_runner(cfg)
        for note in notes:
            runner.logger.warning(note)
        check_checkpoint_fits(runner.model, args.checkpoint, checkpoint)
        metrics = runner.test()
        if args.show_dir:
            runner.logger.info(f'rendered predictions: {osp.abspath(args.show_dir)}')
        return metrics


if __name__ == '__main__':
    run_main(main)
