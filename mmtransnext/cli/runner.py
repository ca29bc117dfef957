"""The mmengine Runner of a train or test run."""
import os.path as osp


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config name>``, where a run goes without ``--work-dir`` or ``work_dir``."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def build_runner(cfg):
    """``Runner.from_cfg`` with the config's own runner type when it names one."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
