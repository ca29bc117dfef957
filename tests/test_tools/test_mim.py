"""mim (openmim) with an installed mmtransnext: ``mim search`` reads the model index, ``mim train``
and ``mim test`` run the packaged tools on a packaged config from outside the repository. The
package is installed from a copy of the source (no compiled ops) into a folder of its own."""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from loopback_http import serve
from tool_helpers import ROOT, SHALLOW, ade_options

pytestmark = pytest.mark.slow
DEMO = 'upernet_transnext-micro_shapes-128.py'


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """Environment whose ``mmtransnext`` is a (non-editable) install of this source."""
    pytest.importorskip('mim')
    tmp = tmp_path_factory.mktemp('mim')
    source, site = tmp / 'source', tmp / 'site'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'build', 'work_dirs', 'data', '*.so', '__pycache__', '.mim',
        '*.egg-info', '.pytest_cache', '.gpu_wheels'))
    env = dict(os.environ, MMTRANSNEXT_WITH_OPS='0', PYTHONWARNINGS='ignore',
               OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                             '--no-build-isolation', '--target', str(site), str(source)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    env['PYTHONPATH'] = str(site)
    return env, site


def _mim(args, env, cwd):
    mim = osp.join(osp.dirname(sys.executable), 'mim')
    result = subprocess.run([mim, *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=900)
    return result.returncode, result.stdout + result.stderr


def test_the_install_carries_tools_configs_and_index(installed):
    _, site = installed
    mim_dir = site / 'mmtransnext' / '.mim'
    assert (mim_dir / 'tools' / 'train.py').is_file()
    assert (mim_dir / 'configs' / 'demo' / DEMO).is_file()
    index = yaml.safe_load((mim_dir / 'model-index.yml').read_text())
    assert all((mim_dir / path).is_file() for path in index['Import'])


def test_mim_search(installed, tmp_path):
    env, _ = installed
    code, out = _mim(['search', 'mmtransnext', '--field', 'parameters'], env, str(tmp_path))
    assert code == 0, out[-3000:]
    assert re.search(r'config id: mask-rcnn_transnext-tiny_fpn_1x_coco\s+parameters\s+47863704',
                     out)


def test_mim_train_and_test(installed, data_dir, tmp_path):
    env, site = installed
    work_dir = str(tmp_path / 'work')
    options = [*SHALLOW, *ade_options(data_dir), 'train_cfg.max_iters=2',
               'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
               'default_hooks.logger.interval=1',
               'train_dataloader.batch_size=2', 'val_dataloader.dataset.indices=2',
               'test_dataloader.dataset.indices=2']
    # the config by name: mim finds it in the installed package, not in this repository
    code, out = _mim(['train', 'mmtransnext', DEMO, '--work-dir', work_dir, '--cfg-options',
                      *options], env, str(tmp_path))
    assert code == 0, out[-4000:]
    found = re.search(r'will use (\S+) instead', out)
    assert found and found.group(1).startswith(str(site)), out[:2000]
    assert 'Iter(train) [2/2]' in out
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    code, out = _mim(['test', 'mmtransnext', DEMO, '--checkpoint',
                      osp.join(work_dir, 'iter_2.pth'), '--work-dir', work_dir, '--cfg-options',
                      *options], env, str(tmp_path))
    assert code == 0, out[-4000:]
    assert 'mIoU' in out


def test_mim_download_fetches_the_released_file_of_a_config(installed, tmp_path):
    """``mim download`` reads the ``Weights`` URL of the installed model index. Here the index of
    the installed copy points one config at a loopback server holding a stand-in file."""
    env, site = installed
    name = 'mask-rcnn_transnext-tiny_fpn_1x_coco'
    released = 'mask_rcnn_transnext_tiny_fpn_1x_coco_in1k.pth'
    metafile = site / 'mmtransnext' / '.mim' / 'configs' / 'mask_rcnn' / 'metafile.yml'
    text = metafile.read_text()
    official = re.search(rf"Weights: '(https://\S+/{released})'", text).group(1)
    served_dir = tmp_path / 'served'
    served_dir.mkdir()
    with serve(str(served_dir)) as server:
        url = server.put(released, {'state_dict': {'backbone.w': torch.arange(4.)}})
        metafile.write_text(text.replace(official, url))
        try:
            code, out = _mim(['download', 'mmtransnext', '--config', name, '--dest',
                              str(tmp_path / 'dest')], env, str(tmp_path))
        finally:
            metafile.write_text(text)
    assert code == 0, out[-3000:]
    assert server.requests == [f'/{released}']
    assert (tmp_path / 'dest' / released).read_bytes() == (served_dir / released).read_bytes()
    assert (tmp_path / 'dest' / f'{name}.py').is_file()  # the config, dumped whole
