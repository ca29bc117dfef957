"""Checkpoints named by ``http(s)://`` URL, served by a loopback HTTP server the way huggingface.co
and GitHub releases serve the official weights: downloaded once into torch hub's cache, then read
by the same rules as a local file (restricted unpickling, finite weights) in every entry point."""
import os
import os.path as osp
import socket

import pytest
import torch
from loopback_http import serve
from mmengine.runner import load_checkpoint

from mmtransnext.checkpoint import (CheckpointError, cached_download, mmengine_loader,
                                    read_checkpoint)
from mmtransnext.cli import ToolError, check_pretrained, read_checkpoint_arg
from mmtransnext.models import TransNeXt

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCH = dict(arch='micro', depths=[1, 1, 1, 1])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / 'served'
    root.mkdir()
    with serve(str(root)) as served:
        yield served


@pytest.fixture(autouse=True)
def hub(tmp_path, monkeypatch):
    """torch hub's folder (and so the download cache) in the test's own directory."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)
    monkeypatch.delenv('MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS', raising=False)
    assert torch.hub.get_dir() == str(tmp_path / 'torch' / 'hub')
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_download_once_then_read_from_the_cache(server, hub):
    url = server.put('weights.pth', {'model': {'w': torch.arange(3.)}})
    first = read_checkpoint(url + '?download=true')
    second = read_checkpoint(url)
    assert torch.equal(first['model']['w'], torch.arange(3.))
    assert torch.equal(second['model']['w'], torch.arange(3.))
    assert server.requests == ['/weights.pth?download=true']  # the second read is the cache's
    assert sorted(os.listdir(hub)) == ['weights.pth']  # no partial file left beside it
    assert cached_download(url) == str(hub / 'weights.pth')


def test_http_error_names_the_url_the_status_and_the_local_alternative(server, hub):
    url = f'{server.url}/missing.pth'
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(url)
    message = str(err.value)
    assert '\n' not in message
    assert url in message and 'HTTP 404' in message
    assert 'init_cfg.checkpoint=PATH' in message
    assert not hub.exists() or os.listdir(hub) == []


def test_offline_error_names_the_url(hub):
    url = f'http://127.0.0.1:{_closed_port()}/transnext_tiny_224_1k.pth'
    with pytest.raises(CheckpointError, match=r'cannot download http://127\.0\.0\.1:\d+/'
                       r'transnext_tiny_224_1k\.pth: .*refused.*local file'):
        read_checkpoint(url)


def test_non_finite_weights_refused_over_http_as_on_disk(server, tmp_path):
    state = {'state_dict': {'backbone.w': torch.tensor([1., float('nan')])}}
    url = server.put('nan.pth', state)
    torch.save(state, tmp_path / 'nan.pth')
    for source in (url, str(tmp_path / 'nan.pth')):
        with pytest.raises(CheckpointError, match=r'backbone\.w \(1 NaN of 2\)'):
            read_checkpoint(source)
    assert read_checkpoint(url, allow_non_finite=True)['state_dict']['backbone.w'].isnan().any()


class _System:
    """Pickles as a call of ``os.system``: what a hostile file can ask for."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_crafted_pickle_refused_over_http_and_nothing_runs(server, tmp_path):
    marker = tmp_path / 'marker'
    url = server.put('hostile.pth', {'state_dict': {'w': torch.ones(1)},
                                     'meta': {'x': _System(f'touch {marker}')}})
    with pytest.raises(CheckpointError, match=r'hostile\.pth.* was not loaded: it needs '
                       r'.*system'):
        read_checkpoint(url)
    assert not marker.exists()


def test_mmengine_load_checkpoint_reads_urls_through_the_package(server):
    """``load_from``, ``tools/test.py CONFIG URL``, ``init_detector``: mmengine's loader, with
    the package's installed (as the tools' CheckpointReaderHook installs it)."""
    model = TransNeXt(**ARCH)
    weights = {k: v + 0.25 for k, v in model.state_dict().items()}
    good = server.put('good.pth', {'state_dict': weights})
    with mmengine_loader():
        load_checkpoint(model, good, strict=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    weights['norm4.weight'][0] = float('inf')
    bad = server.put('bad.pth', {'state_dict': weights})
    with mmengine_loader(), pytest.raises(CheckpointError, match=r'norm4\.weight \(1 inf of'):
        load_checkpoint(model, bad)


def test_backbone_init_cfg_takes_a_url(server):
    state = {k: v + 0.5 for k, v in TransNeXt(**ARCH).state_dict().items()}
    url = server.put('transnext_micro_224_1k.pth', {'model': state})
    model = TransNeXt(**ARCH, init_cfg=dict(type='Pretrained', checkpoint=url))
    model.init_weights()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_tools_read_checkpoint_urls_and_name_download_errors(server):
    url = server.put('ckpt.pth', {'state_dict': {'backbone.w': torch.ones(2)}})
    assert torch.equal(read_checkpoint_arg(url, 'checkpoint file')
                       ['state_dict']['backbone.w'], torch.ones(2))
    missing = f'{server.url}/nowhere.pth'
    with pytest.raises(ToolError, match=r'checkpoint file: cannot download .*'
                       r'nowhere\.pth: HTTP 404'):
        read_checkpoint_arg(missing, 'checkpoint file')
    from mmengine.config import Config
    cfg = Config(dict(model=dict(backbone=dict(
        type='TransNeXt', init_cfg=dict(type='Pretrained', checkpoint=missing)))))
    with pytest.raises(ToolError, match=r'model\.backbone\.init_cfg\.checkpoint of '
                       r'my_config\.py: cannot download .*HTTP 404'):
        check_pretrained(cfg, 'my_config.py')
    cfg.model.backbone.init_cfg.checkpoint = url
    check_pretrained(cfg, 'my_config.py')  # downloaded here, once
    assert server.requests.count('/ckpt.pth') == 1
