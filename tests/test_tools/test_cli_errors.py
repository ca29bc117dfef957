"""Every tool refuses a bad argument or file with one ``error: ...`` line that names it, no
traceback, exit status 1 (the tool's own checks) or 2 (argparse), and nothing written first."""
import logging
import os
import os.path as osp
import sys
from typing import List, Set

import pytest
import torch
from tool_helpers import MASK_RCNN_DEMO, UPERNET_DEMO, load_tool

from mmtransnext.cli import run_main

SHALLOW_OPTIONS = ['--cfg-options', 'model.backbone.depths=[1,1,1,1]']


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each case runs in an empty directory, so that anything a tool writes shows up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS', raising=False)


def _log_to_this_capture() -> None:
    """mmengine's loggers outlive a test: point their console handlers at the current capture
    (an earlier test's is closed by now)."""
    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stdout  # not setStream: it flushes the closed one


def _files(root) -> Set[str]:
    return {osp.relpath(osp.join(d, n), root) for d, dirs, names in os.walk(root)
            for n in dirs + names}


def _refused(capsys, tmp_path, tool: str, argv: List[str], *named: str,
             code: int = 1) -> str:
    """Run ``tool``'s main like its ``__main__`` does; check the refusal; return the line."""
    module = load_tool(tool)
    before = _files(tmp_path)
    _log_to_this_capture()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert exit_info.value.code == code, err
    assert len(lines) == 1 and 'Traceback' not in err, err
    for name in named:
        assert name in lines[0], lines[0]
    assert _files(tmp_path) == before, 'written before the arguments were checked'
    return lines[0]


@pytest.fixture
def files(tmp_path):
    """Bad inputs: a config with a syntax error, a folder, a corrupt and a NaN checkpoint, a
    file where a folder is wanted."""
    (tmp_path / 'broken.py').write_text("_base_ = ['x.py']\nmodel = dict(\n")
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'corrupt.pth').write_bytes(b'PK\x03\x04 not really a zip' * 10)
    torch.save({'state_dict': {'backbone.w': torch.full((3, ), float('nan')),
                               'neck.b': torch.zeros(2)}}, tmp_path / 'nan.pth')
    (tmp_path / 'a_file').write_text('x')
    return tmp_path


# ------------------------------------------------------------------- train.py / test.py
@pytest.mark.parametrize('argv,named', [
    (['broken.py'], ['config file broken.py cannot be read', 'SyntaxError']),
    (['folder'], ['config file is a directory, not a file: folder']),
    (['missing.py'], ['config file not found: missing.py']),
    ([MASK_RCNN_DEMO, '--resume', 'folder'],
     ['--resume checkpoint is a directory, not a file: folder']),
    ([MASK_RCNN_DEMO, '--resume', 'corrupt.pth'],
     ['--resume checkpoint: corrupt.pth is not a readable PyTorch checkpoint']),
    ([MASK_RCNN_DEMO, '--resume', 'nan.pth'],
     ['--resume checkpoint: nan.pth: 1 of 2 weight tensors hold non-finite values: '
      'backbone.w (3 NaN of 3)']),
    ([MASK_RCNN_DEMO, '--cfg-options', 'load_from=nan.pth'],
     ['load_from checkpoint: nan.pth', 'backbone.w (3 NaN of 3)']),
    ([MASK_RCNN_DEMO, '--work-dir', 'a_file'], ['--work-dir a_file is not a directory']),
])
def test_train_refuses(capsys, files, argv, named):
    _refused(capsys, files, 'train', argv, *named)


@pytest.mark.parametrize('argv,named', [
    ([MASK_RCNN_DEMO, 'folder'], ['checkpoint file is a directory, not a file: folder']),
    ([MASK_RCNN_DEMO, 'corrupt.pth'], ['checkpoint file: corrupt.pth is not a readable']),
    ([MASK_RCNN_DEMO, 'nan.pth'], ['checkpoint file: nan.pth: 1 of 2 weight tensors',
                                   'MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS=1']),
    (['broken.py', 'nan.pth'], ['config file broken.py cannot be read']),
    (['missing.py', 'nan.pth'], ['config file not found: missing.py']),
])
def test_test_refuses(capsys, files, argv, named):
    _refused(capsys, files, 'test', argv, *named)


def test_allow_non_finite_lets_a_nan_checkpoint_through(capsys, files, monkeypatch):
    """``--allow-non-finite``: the NaN file is read (with a warning), so the next check speaks:
    its keys do not fit the model. The switch holds for the tool's run only and is not left in
    the environment."""
    from mmtransnext.checkpoint import NON_FINITE_ENV, CheckpointError, read_checkpoint
    monkeypatch.delenv(NON_FINITE_ENV, raising=False)
    module = load_tool('test')
    _log_to_this_capture()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main([MASK_RCNN_DEMO, 'nan.pth', '--allow-non-finite',
                                      '--work-dir', 'out']))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    (line,) = [line for line in err.splitlines() if 'error:' in line]
    assert 'checkpoint nan.pth does not fit the model' in line and 'non-finite' not in line
    assert NON_FINITE_ENV not in os.environ
    with pytest.raises(CheckpointError, match='non-finite'):  # after the run: refused again
        read_checkpoint('nan.pth')


def test_test_refuses_a_file_as_show_dir(capsys, files):
    """The checkpoint is read before --show-dir is looked at: give it a finite one."""
    torch.save({'state_dict': {'w': torch.zeros(2)}}, files / 'ok.pth')
    _refused(capsys, files, 'test', [MASK_RCNN_DEMO, 'ok.pth', '--show-dir', 'a_file'],
             '--show-dir a_file is not a directory')


# ------------------------------------------------------------------- analysis tools
ERF = [UPERNET_DEMO, '--demo', '--num', '1', *SHALLOW_OPTIONS]


@pytest.mark.parametrize('argv,named,code', [
    ([*ERF, '--size', '0', '0'], ['argument --size: must be >= 1, got 0'], 2),
    ([*ERF, '--size', '-3', '64'], ['argument --size: must be >= 1, got -3'], 2),
    ([*ERF, '--num', '0'], ['argument --num: must be >= 1, got 0'], 2),
    ([*ERF, '--stage', '-1'], ['argument --stage: must be >= 0, got -1'], 2),
    ([*ERF, '--stage', '7'], ['--stage 7:', 'stage indices in [0, 3]'], 1),
    ([UPERNET_DEMO, 'folder', '--demo'], ['checkpoint file is a directory, not a file'], 1),
    ([UPERNET_DEMO, 'missing.pth', '--demo'], ['checkpoint file not found: missing.pth'], 1),
    (['missing.py', '--demo'], ['config file not found: missing.py'], 1),
    ([*ERF, '--out', 'folder'], ['--out folder is a directory'], 1),
    ([*ERF, '--out', 'a_file/erf.png'], ['--out a_file/erf.png: cannot write there', 'a_file is a file'], 1),
    ([UPERNET_DEMO, 'corrupt.pth', '--demo', '--num', '1', *SHALLOW_OPTIONS],
     ['checkpoint file: corrupt.pth is not a readable'], 1),
    ([UPERNET_DEMO, 'nan.pth', '--demo', '--num', '1', *SHALLOW_OPTIONS],
     ['checkpoint file: nan.pth', 'backbone.w (3 NaN of 3)'], 1),
])
def test_effective_receptive_field_refuses(capsys, files, argv, named, code):
    _refused(capsys, files, 'effective_receptive_field', argv, *named, code=code)


ATTENTION = [UPERNET_DEMO, '--out', 'maps', *SHALLOW_OPTIONS]


@pytest.mark.parametrize('argv,named,code', [
    ([*ATTENTION, '--head', '5'], ['--head 5: stage 0 has 2 heads'], 1),
    ([*ATTENTION, '--head', '-1'], ['argument --head: must be >= 0, got -1'], 2),
    ([*ATTENTION, '--stage', '4'], ['--stage 4: the backbone has 4 stages'], 1),
    ([*ATTENTION, '--size', '0', '64'], ['argument --size: must be >= 1, got 0'], 2),
    ([*ATTENTION, '--dpi', '0'], ['argument --dpi: must be >= 1, got 0'], 2),
    ([UPERNET_DEMO, '--out', 'a_file'], ['--out a_file is not a directory'], 1),
    ([*ATTENTION, '--image', 'folder'], ['image file is a directory, not a file: folder'], 1),
])
def test_visualize_attention_refuses(capsys, files, argv, named, code):
    _refused(capsys, files, 'visualize_attention', argv, *named, code=code)


@pytest.mark.parametrize('tool,argv,named', [
    ('get_flops', [UPERNET_DEMO, '--shape', '0'], ['argument --shape: must be >= 1, got 0']),
    ('describe_backbone', ['--size', '0', '224'], ['argument --size: must be >= 1, got 0']),
    ('describe_backbone', ['--batch', '0'], ['argument --batch: must be >= 1, got 0']),
    ('describe_backbone', ['--threads', '-2'], ['argument --threads: must be >= 1, got -2']),
    ('gpu_benchmark', ['--runs', '0'], ['argument --runs: must be >= 1, got 0']),
    ('gpu_benchmark', ['--sizes', '0x64'], ["argument --sizes: sizes must be >= 1, got '0x64'"]),
    ('gpu_benchmark', ['--time-limit', '-1'], ['argument --time-limit: must be > 0, got -1']),
    ('check_triton_build', ['--jobs', '0'], ['argument --jobs: must be >= 1, got 0']),
    ('check_triton_build', ['--sizes', 'ax7'], ["argument --sizes: expected HxW or one size"]),
    ('benchmark_backbone', ['--threads', '0'], ['argument --threads: must be >= 1, got 0']),
    ('benchmark_backbone', ['--runs', '-1'], ['argument --runs: must be >= 0, got -1']),
    ('benchmark_ops', ['--repeats', '0'], ['argument --repeats: must be >= 1, got 0']),
])
def test_numeric_arguments_are_checked(capsys, files, tool, argv, named):
    _refused(capsys, files, tool, argv, *named, code=2)


def test_get_flops_names_a_broken_config(capsys, files):
    _refused(capsys, files, 'get_flops', ['broken.py'], 'config file broken.py cannot be read')


def test_check_triton_build_names_a_missing_dino_config(capsys, files):
    _refused(capsys, files, 'check_triton_build', ['--dino', 'missing.py', '--no-compile'],
             '--dino config not found: missing.py')


def test_gpu_benchmark_refuses_a_folder_as_out(capsys, files):
    _refused(capsys, files, 'gpu_benchmark', ['--device', 'cpu', '--dry-run', '--out', 'folder'],
             '--out folder is a directory')

