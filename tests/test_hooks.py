"""Importing mmtransnext changes nothing in mmengine; the two process-wide changes a run may
need (:mod:`mmtransnext.hooks`) hold for that run only, and with the checkpoint reader installed
another model's mmengine checkpoint loads exactly as it does without the plugin."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from mmtransnext.checkpoint import MMENGINE_SCHEMES, load_from_mmtransnext
from mmtransnext.hooks import CheckpointReaderHook, EagerOptimizerUpdateHook

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Reads a checkpoint as mmengine does (its file, and a model loaded from it) and pickles both.
# With argv[3] == 'plugin': first `import mmtransnext`, recording mmengine's loaders and
# OptimWrapper.update_params before and after it, then reads inside the tools'
# CheckpointReaderHook.
_LOAD = '''
import pickle, sys
import torch
from mmengine.optim import OptimWrapper
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_checkpoint

def state():
    return ({p: f'{f.__module__}.{f.__qualname__}' for p, f in CheckpointLoader._schemes.items()},
            OptimWrapper.__dict__['update_params'])

path, out, mode = sys.argv[1:4]
hook, result = None, {}
if mode == 'plugin':
    before = state()
    import mmtransnext
    after = state()
    result.update(schemes_before=before[0], schemes_after=after[0],
                  update_params_unchanged=before[1] is after[1])
    from mmtransnext.hooks import CheckpointReaderHook
    hook = CheckpointReaderHook()
    hook.before_run(None)
model = torch.nn.ModuleDict(
    {'net': torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))})
checkpoint = _load_checkpoint(path, map_location='cpu')
loaded = load_checkpoint(model, path, map_location='cpu', strict=True)
if hook is not None:
    hook.after_run(None)
result.update(file=checkpoint, returned=loaded, model=model.state_dict())
with open(out, 'wb') as f:
    pickle.dump(result, f)
'''


def _run(code: str, *args: str, env=None) -> None:
    result = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]


class _Toy(BaseModel):
    """Another project's model: what mmengine's Runner trains and checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.net(torch.stack(inputs) if isinstance(inputs, list) else inputs)
        return {'loss': out.square().mean()} if mode == 'loss' else out


def _runner_checkpoint(work_dir: str) -> str:
    """A checkpoint of :class:`_Toy` as mmengine's Runner writes it (meta, message hub with
    numpy-backed HistoryBuffers, optimizer state) after two SGD iterations."""
    from mmengine.runner import Runner
    data = [dict(inputs=torch.randn(3)) for _ in range(4)]
    runner = Runner(
        model=_Toy(), work_dir=work_dir,
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        experiment_name='toy')
    runner.train()
    return osp.join(work_dir, 'iter_2.pth')


def _assert_same(a, b, where='checkpoint') -> None:
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f'{where}[{key!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    elif isinstance(a, HistoryBuffer):
        _assert_same(vars(a), vars(b), where)
    else:
        assert a == b, where


def test_this_process_kept_mmengines_own_loaders_and_update():
    """The fast check (this process imported mmtransnext; no test installs anything for good):
    the subprocess tests below show it for a fresh import."""
    from mmengine.runner.checkpoint import load_from_http, load_from_local
    assert CheckpointLoader._schemes[''] is load_from_local
    assert CheckpointLoader._schemes['https://'] is load_from_http
    assert not hasattr(OptimWrapper.__dict__['update_params'], '_mmtransnext_outside_dynamo')


@pytest.fixture(scope='module')
def loads(tmp_path_factory):
    """What a plain process (mmengine only) and a plugin process read from one runner
    checkpoint of :class:`_Toy`: ``{'plain': ..., 'plugin': ...}``."""
    folder = tmp_path_factory.mktemp('another_model')
    path = _runner_checkpoint(str(folder / 'work'))
    out = {}
    for mode in ('plain', 'plugin'):
        # Without the plugin, mmengine 0.10 reads its own runner checkpoints only with torch's
        # weights-only default lifted (torch >= 2.6), which the plain process does.
        env = {'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD': '1'} if mode == 'plain' else None
        _run(_LOAD, path, str(folder / f'{mode}.pkl'), mode, env=env)
        with open(folder / f'{mode}.pkl', 'rb') as f:
            out[mode] = pickle.load(f)
    return out


@pytest.mark.slow  # two fresh processes (one imports mmtransnext) and a short Runner run
def test_import_leaves_mmengine_loaders_and_optim_wrapper_alone(loads):
    """In a fresh process: the loaders of every scheme and ``OptimWrapper.update_params`` are
    the same objects after ``import mmtransnext`` as before."""
    seen = loads['plugin']
    assert seen['schemes_after'] == seen['schemes_before']
    assert seen['schemes_before'][''] == 'mmengine.runner.checkpoint.load_from_local'
    assert seen['update_params_unchanged']


@pytest.mark.slow  # shares the fixture above
def test_another_models_runner_checkpoint_loads_as_without_the_plugin(loads):
    """With the tools' CheckpointReaderHook the file is read without unpickling code, and comes
    out as mmengine reads it without the plugin: keys (in order), tensors, meta, message hub,
    optimizer state, and the model's weights after ``load_checkpoint``."""
    want, got = loads['plain'], loads['plugin']
    assert {'meta', 'state_dict', 'message_hub', 'optimizer'} <= set(want['file'])
    assert isinstance(want['file']['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    _assert_same({k: got[k] for k in want}, want)


def test_hooks_hold_their_change_for_the_run_only():
    schemes = dict(CheckpointLoader._schemes)
    update = OptimWrapper.__dict__['update_params']
    reader, eager = CheckpointReaderHook(), EagerOptimizerUpdateHook()
    reader.before_run(None)
    eager.before_run(None)
    assert CheckpointLoader._schemes[''] is load_from_mmtransnext
    assert CheckpointLoader._schemes['https://'] is load_from_mmtransnext
    assert all(CheckpointLoader._schemes[p] is loader for p, loader in schemes.items()
               if p not in MMENGINE_SCHEMES)  # open-mmlab://, torchvision://, s3://: mmengine's
    assert OptimWrapper.__dict__['update_params'] is not update
    eager.after_run(None)
    reader.after_run(None)
    assert dict(CheckpointLoader._schemes) == schemes
    assert OptimWrapper.__dict__['update_params'] is update


@pytest.mark.parametrize('hook', ['CheckpointReaderHook', 'EagerOptimizerUpdateHook'])
def test_hooks_build_from_a_config_under_every_scope(hook):
    """``custom_hooks = [dict(type=...)]`` in an mmdet, mmseg or mmpretrain config."""
    import importlib
    for scope in ('mmdet', 'mmseg', 'mmpretrain'):
        registry = importlib.import_module(f'{scope}.registry').HOOKS
        assert type(registry.build(dict(type=hook))).__name__ == hook
