"""Shared helpers of the tools tests: paths, --cfg-options for the generated data, running a
tool."""
import os
import os.path as osp
import subprocess
import sys
from typing import List

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools')

MASK_RCNN_DEMO = osp.join(ROOT, 'configs', 'demo', 'mask-rcnn_transnext-micro_fpn_shapes-128.py')
UPERNET_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_transnext-micro_shapes-128.py')
#: Smaller than the demo configs, for smoke runs: a 1-block-per-stage Micro backbone.
SHALLOW = ['model.backbone.depths=[1,1,1,1]']
#: mmengine validates after the last iteration whatever val_interval says; this turns it off.
NO_VAL = ['val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']


def coco_options(data_dir: str) -> List[str]:
    """--cfg-options pointing a demo detection config at the generated set in ``data_dir``."""
    root = osp.join(data_dir, 'shapes_coco') + '/'
    options = [f'{loader}.dataset.data_root={root}'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    return options + [f'{name}.ann_file={root}annotations/instances_val.json'
                      for name in ('val_evaluator', 'test_evaluator')]


def ade_options(data_dir: str) -> List[str]:
    root = osp.join(data_dir, 'shapes_ade') + '/'
    return [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def run_tool(args: List[str], cwd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python <args>`` (a tool) in ``cwd``; output captured as text."""
    # One thread per process: these models are tiny, and idle-waiting threads slow everything
    # down badly when the cores are shared with other work.
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def load_tool(name: str):
    """tools/<name>.py (or tools/analysis/<name>.py) as a module. Its folder is put on the
    module search path (last, so that tools/test.py does not hide the standard ``test``), as
    ``python tools/...`` puts it first: a tool imports the modules beside it by name."""
    import importlib.util
    path = osp.join(TOOLS, f'{name}.py')
    if not osp.exists(path):
        path = osp.join(TOOLS, 'analysis', f'{name}.py')
    if osp.dirname(path) not in sys.path:
        sys.path.append(osp.dirname(path))
    spec = importlib.util.spec_from_file_location(f'tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
