"""Cluster launchers: tools/slurm_train.sh / slurm_test.sh against a stand-in ``srun`` (it runs
the tasks on this machine with the variables a real srun sets), and tools/dist_train.sh as two
torchrun "nodes" on 127.0.0.1. All on CPU with gloo."""
import json
import os
import os.path as osp
import re
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
from tool_helpers import ROOT, SHALLOW, UPERNET_DEMO, ade_options

from mmtransnext.cli import ToolError, first_slurm_node, slurm_environment

#: A stand-in for Slurm's srun: starts ``--ntasks`` copies of the command here, each with the
#: SLURM_* variables srun gives a task (one "node", ``localhost``), records its own arguments
#: and returns the worst exit status.
FAKE_SRUN = textwrap.dedent('''\
    #!{python}
    import json, os, subprocess, sys
    args = sys.argv[1:]
    options = {{}}
    while args and args[0].startswith('-'):
        name = args.pop(0)
        if '=' in name:
            name, value = name.split('=', 1)
        elif name in ('-p', '--partition'):
            value = args.pop(0)
        else:
            value = True
        options[name] = value
    with open(os.environ['FAKE_SRUN_LOG'], 'a') as f:
        f.write(json.dumps(dict(options=options, command=args)) + '\\n')
    tasks = int(options['--ntasks'])
    per_node = int(options.get('--ntasks-per-node', tasks))
    procs = []
    for rank in range(tasks):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=str(tasks),
                   SLURM_LOCALID=str(rank % per_node), SLURM_NODELIST='localhost',
                   SLURM_NNODES=str(-(-tasks // per_node)),
                   SLURM_JOB_NAME=str(options.get('--job-name', '')))
        procs.append(subprocess.Popen(args, env=env))
    sys.exit(max(p.wait() for p in procs))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_slurm(tmp_path):
    """Environment with the stand-in srun first on PATH; its call log."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / 'srun.jsonl'
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               PYTHON=sys.executable, FAKE_SRUN_LOG=str(log), MASTER_PORT=str(_free_port()),
               GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1', PYTHONWARNINGS='ignore',
               OMP_NUM_THREADS='1')
    env.pop('MASTER_ADDR', None)
    return env, log


def _run(command, env, cwd):
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=900)
    return result.returncode, result.stdout + result.stderr


def _options(data_dir, iters):
    return [*SHALLOW, *ade_options(data_dir), f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={iters}', 'default_hooks.checkpoint.interval=2',
            'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
            'val_dataloader.dataset.indices=4', 'test_dataloader.dataset.indices=4']


@pytest.mark.slow
def test_slurm_train_resume_and_test(fake_slurm, data_dir, tmp_path):
    env, log = fake_slurm
    work_dir = str(tmp_path / 'work')
    train = osp.join(ROOT, 'tools', 'slurm_train.sh')
    code, out = _run(['bash', train, 'part', 'job', UPERNET_DEMO, work_dir, '--cfg-options',
                      *_options(data_dir, 2)], env, str(tmp_path))
    assert code == 0, out[-4000:]
    assert 'Distributed training: True' in out and 'GPU number: 2' in out
    assert re.search(r'no CUDA: distributed backend gloo', out)
    assert 'Iter(train) [2/2]' in out and 'mIoU' in out  # trained, then evaluated
    call = json.loads(log.read_text().splitlines()[0])
    assert call['options']['-p'] == 'part' and call['options']['--job-name'] == 'job'
    assert call['options']['--ntasks'] == '2' and call['options']['--gres'] == 'gpu:2'
    assert call['options']['--cpus-per-task'] == '1'
    assert '--launcher=slurm' in call['command']

    # resumed from its own work dir (mmengine's --resume with no file: the latest checkpoint)
    code, out = _run(['bash', train, 'part', 'job', UPERNET_DEMO, work_dir, '--resume',
                      '--cfg-options', *_options(data_dir, 4)], env, str(tmp_path))
    assert code == 0, out[-4000:]
    assert 'resumed' in out.lower() and 'Iter(train) [3/4]' in out
    assert not re.search(r'Iter\(train\) \[[12]/4\]', out)
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))

    # 4 test images over 2 tasks: each runs 2 iterations, the metric gathers all 4
    code, out = _run(['bash', osp.join(ROOT, 'tools', 'slurm_test.sh'), 'part', 'job',
                      UPERNET_DEMO, osp.join(work_dir, 'iter_4.pth'), '--work-dir', work_dir,
                      '--cfg-options', *_options(data_dir, 4)], env, str(tmp_path))
    assert code == 0, out[-4000:]
    assert 'Iter(test) [2/2]' in out and 'mIoU' in out


@pytest.mark.slow
def test_dist_train_on_two_nodes(data_dir, tmp_path):
    """tools/dist_train.sh started twice, as node 0 and node 1 of a 2-node job (NNODES,
    NODE_RANK, MASTER_ADDR, PORT), one process per node."""
    port = str(_free_port())
    work_dir = str(tmp_path / 'work')
    procs = []
    for node in (0, 1):
        env = dict(os.environ, PYTHON=sys.executable, NNODES='2', NODE_RANK=str(node),
                   MASTER_ADDR='127.0.0.1', PORT=port, PYTHONWARNINGS='ignore',
                   OMP_NUM_THREADS='1')
        procs.append(subprocess.Popen(
            ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), UPERNET_DEMO, '1', '--work-dir',
             work_dir, '--cfg-options', *_options(data_dir, 2)],
            env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert 'Distributed training: True' in outs[0]
    assert 'GPU number: 2' in outs[0]  # mmengine's name for the world size
    assert 'Iter(train) [2/2]' in outs[0]
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))


def test_first_slurm_node_without_scontrol(monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')
    assert first_slurm_node('gpu[07-09,12],cpu3') == 'gpu07'
    assert first_slurm_node('n[1],m[2-3]') == 'n1'
    assert first_slurm_node('host-a,host-b') == 'host-a'
    assert first_slurm_node('single') == 'single'


def test_slurm_environment(monkeypatch):
    # slurm_environment writes os.environ itself: the whole environment is restored after, or
    # MASTER_ADDR=gpu03 and RANK=5 would reach later tests' torchrun (which then hangs).
    monkeypatch.setattr(os, 'environ', os.environ.copy())
    for key in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        os.environ.pop(key, None)
    os.environ.update(PATH='/nonexistent', SLURM_PROCID='5', SLURM_NTASKS='16',
                      SLURM_LOCALID='1', SLURM_NODELIST='gpu[03-04]')
    slurm_environment()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('5', '16', '1')
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('gpu03', '29500')


def test_slurm_environment_left_no_trace():
    """Runs after the test above (file order): the variables it set are gone."""
    assert os.environ.get('MASTER_ADDR') != 'gpu03' and os.environ.get('RANK') != '5'


def test_slurm_launcher_outside_slurm_is_refused(monkeypatch):
    monkeypatch.delenv('SLURM_PROCID', raising=False)
    with pytest.raises(ToolError, match='outside a Slurm task.*SLURM_PROCID.*srun'):
        slurm_environment()


@pytest.mark.parametrize('script', ['slurm_train.sh', 'slurm_test.sh'])
def test_slurm_scripts_print_usage(script):
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', script), 'part'],
                            capture_output=True, text=True)
    assert result.returncode == 2 and 'usage:' in result.stderr
