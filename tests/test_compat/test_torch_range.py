"""The declared torch range holds at both ends (README "Supported versions").

The floor: a venv with the oldest supported torch, made once per machine and cached
(``tools/cached_venv.sh``), the compiled ops built against it; the top: the test environment
itself. At each end ``range_check.py`` imports the package, checks both families against the
official computation (TransNeXt on the 'torch' and 'ext' backends, with gradients) and reads
checkpoints through the restricted reader, those the other end wrote included. Below the floor
``import mmtransnext`` refuses in one line (a stand-in torch: a real torch 2.0 venv would cost
another download of torch and its CUDA libraries for one message).
"""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Optional

import pytest
import torch

from mmtransnext.utils import compat
from mmtransnext.version import TORCH_FLOOR

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(ROOT, 'tests', 'test_compat', 'range_check.py')
FLOOR_VENV = 'torch2.1-floor'
#: The floor's environment: mmcv 2.1's last torch, mmcv-lite (the backbones use mmcv's Python
#: bricks only; its compiled ops are not needed), numpy 1 (torch 2.1 predates numpy 2),
#: opencv before its numpy-2-only releases, ninja for the compiled ops.
FLOOR_PACKAGES = ['torch==2.1.2', 'numpy<2', 'mmcv-lite==2.1.0', 'mmengine==0.10.7',
                  'opencv-python<4.12', 'ninja']


def _run(cmd: List[str], timeout: float, env: Optional[Dict[str, str]] = None) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, (f'{" ".join(cmd)} exited {proc.returncode}:\n'
                                  f'{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
    return proc.stdout


def _with_root_on_path() -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, *filter(None, [env.get('PYTHONPATH')])])
    env.pop('MMTRANSNEXT_TRUSTED_CHECKPOINTS', None)
    return env


def _range_check(python: str, out: str, *extra: str) -> None:
    _run([python, SCRIPT, out, *extra], timeout=900, env=_with_root_on_path())


@pytest.fixture(scope='module')
def top(tmp_path_factory) -> str:
    """The top end's run (this environment): its output folder."""
    out = str(tmp_path_factory.mktemp('top'))
    _range_check(sys.executable, out)
    return out


@pytest.fixture(scope='module')
def floor_python() -> str:
    """The floor venv's python, made on first use (mostly the download of PyPI's torch 2.1
    wheel and the CUDA libraries it depends on)."""
    base = getattr(sys, '_base_executable', sys.executable)
    version = _run([base, '-c', 'import sys; print(*sys.version_info[:2])'], 60).split()
    if tuple(map(int, version)) > (3, 11):
        pytest.skip(f'torch 2.1 has no wheels for Python {".".join(version)}')
    out = _run(['bash', osp.join(ROOT, 'tools', 'cached_venv.sh'), FLOOR_VENV, '--python', base,
                '--', *FLOOR_PACKAGES], timeout=1800)
    return out.strip().splitlines()[-1]


def _sources_digest() -> str:
    digest = hashlib.sha256()
    files = [osp.join(ROOT, 'setup.py'), osp.join(ROOT, 'mmtransnext', 'ops', 'ext_build.py')]
    for folder, _, names in sorted(os.walk(osp.join(ROOT, 'csrc'))):
        files += [osp.join(folder, n) for n in sorted(names)]
    for path in files:
        digest.update(osp.relpath(path, ROOT).encode())
        with open(path, 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _build_ops(python: str) -> str:
    """The compiled ops built against ``python``'s torch by ``setup.py build_ext``, kept in its
    venv per version of the sources; the library's path."""
    venv = osp.dirname(osp.dirname(python))
    lib = osp.join(venv, 'mmtransnext-ops', _sources_digest())
    found = [f for f in (os.listdir(lib) if osp.isdir(lib) else []) if f.endswith('.so')]
    if not found:
        build = f'{lib}.building'
        env = dict(os.environ, MAX_JOBS='2', FORCE_CUDA='0', MMTRANSNEXT_WITH_OPS='1')
        _run([python, 'setup.py', '-q', 'build_ext', '--build-lib', build, '--build-temp',
              osp.join(build, 'tmp')], timeout=900, env=env)
        os.makedirs(lib, exist_ok=True)
        for folder, _, names in os.walk(osp.join(build, 'mmtransnext')):
            for name in names:
                if name.endswith('.so'):
                    os.replace(osp.join(folder, name), osp.join(lib, name))
                    found.append(name)
    assert len(found) == 1, found
    return osp.join(lib, found[0])


@pytest.fixture(scope='module')
def floor(floor_python, top, tmp_path_factory) -> str:
    """The floor end's run, reading the checkpoint the top end wrote: its output folder."""
    out = str(tmp_path_factory.mktemp('floor'))
    _range_check(floor_python, out, '--ext-library', _build_ops(floor_python), '--read',
                 osp.join(top, 'checkpoint.pth'), '--compare-gradients',
                 osp.join(top, 'gradients.pth'))
    return out


def _result(out: str) -> dict:
    with open(osp.join(out, 'result.json')) as f:
        return json.load(f)


@pytest.mark.slow  # a cached venv (first use: torch 2.1's download) and a build of the ops there
def test_floor_runs_both_families_and_reads_checkpoints(floor):
    result = _result(floor)
    assert compat.parse_version(result['torch']) == compat.parse_version(TORCH_FLOOR)
    assert result['ext'] == 'preloaded'  # the ops built against the floor's torch
    # its own checkpoint, then the top end's
    assert result['checkpoints_read'] == [result['torch'], str(torch.__version__)]
    # every training-gradient case, against the top end's (range_check raises over 1e-3)
    assert len(result['gradients_vs']) == 5


@pytest.mark.slow  # needs the floor's run
def test_top_runs_both_families_and_reads_the_floor_checkpoint(top, floor):
    result = _result(top)
    assert result['torch'] == str(torch.__version__)
    assert result['ext'] in ('mmtransnext._ext', 'jit')
    spec = importlib.util.spec_from_file_location('range_check', SCRIPT)
    range_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(range_check)
    # The file torch 2.1 wrote, read here through the restricted reader.
    assert range_check.check_checkpoint(osp.join(floor, 'checkpoint.pth')) == \
        _result(floor)['torch']


def test_import_below_the_floor_refuses_in_one_line(tmp_path):
    standin = tmp_path / 'torch'
    standin.mkdir()
    (standin / '__init__.py').write_text("__version__ = '2.0.1'\n")
    env = _with_root_on_path()
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), env['PYTHONPATH']])
    proc = subprocess.run([sys.executable, '-c', 'import mmtransnext'], cwd=str(tmp_path),
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: mmtransnext needs torch >= 2.1, found torch 2.0.1: ')
    assert 'scaled_dot_product_attention' in last
