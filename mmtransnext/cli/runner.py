"""The mmengine Runner of a train or test run."""
import os.path as osp


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config name>``, where a run goes without ``--work-dir`` or ``work_dir``."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def build_runner(cfg):
    """``Runner.from_cfg`` with the config's own runner type when it names one, reading
    checkpoints through :mod:`mmtransnext.checkpoint` and, under ``compile``, keeping the
    optimizer update out of dynamo, for its runs (:mod:`mmtransnext.hooks`)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from ..hooks import CheckpointReaderHook, EagerOptimizerUpdateHook
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.register_hook(CheckpointReaderHook())  # load_from, --resume: runner checkpoints
    if cfg.get('compile'):
        runner.register_hook(EagerOptimizerUpdateHook())  # paramwise_cfg groups under dynamo
    return runner
