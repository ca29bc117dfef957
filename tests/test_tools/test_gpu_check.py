"""tools/gpu_check.sh and its helpers where there is no GPU (CI): arguments, the one-line refusal
of ``--run``, what ``--prepare`` would download (without downloading), that the wheel list
covers what the check imports, the offline installer's plan, the steps' time limits and
budget, the sanitizer script and the gpu tier's kernel helpers in Triton's interpreter, the
gpu tier's collection and skips, the benchmark's results on a tiny model on the CPU, the
summary and verdict, and the rehearsal (``--rehearse``: every step but the GPU's, against a
stand-in for the device image; ``cuda_build``)."""
import importlib.metadata
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from tool_helpers import ROOT, TOOLS, load_tool

SCRIPT = osp.join(TOOLS, 'gpu_check.sh')
WHEELS = osp.join(TOOLS, 'gpu_check', 'wheels.txt')

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA GPU is visible here')


def gpu_check(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


def gpu_check_module(name):
    """tools/gpu_check/<name>.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f'gpu_check_{name}', osp.join(TOOLS, 'gpu_check', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the script
def test_help_describes_both_modes():
    result = gpu_check('--help')
    assert result.returncode == 0, result.stderr
    for text in ('--prepare DIR', '--run DIR OUT', '--rehearse', '--dry-run', '--full', 'carry',
                 'results.md', 'junit.xml', 'not reached', 'INCOMPLETE'):
        assert text in result.stdout, text


@pytest.mark.parametrize('args', [(), ('--run', 'wheels'), ('--prepare',), ('--bogus',),
                                  ('--prepare', 'a', 'b'), ('--rehearse', 'a', 'b')])
def test_bad_arguments_are_refused(args):
    result = gpu_check(*args)
    assert result.returncode == 2
    assert result.stderr.strip()


@no_gpu
@pytest.mark.parametrize('with_torch', [True, False], ids=['torch-without-cuda', 'no-torch'])
def test_run_without_a_gpu_says_so_in_one_line(tmp_path, with_torch):
    python = sys.executable
    if not with_torch:  # an interpreter that cannot import torch (no site-packages)
        python = tmp_path / 'python'
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
        python.chmod(0o755)
    out = tmp_path / 'out'
    result = gpu_check('--run', str(tmp_path / 'wheels'), str(out), env=dict(PYTHON=str(python)))
    assert result.returncode == 3
    assert result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gpu_check: no CUDA GPU here'), lines
    assert not out.exists(), 'nothing is written without a GPU'


def _dry_run(tmp_path, *extra):
    folder = tmp_path / 'wheels'
    result = gpu_check('--prepare', str(folder), '--dry-run', *extra)
    assert result.returncode == 0, result.stderr
    assert not folder.exists(), 'a dry run downloads nothing'
    lines = result.stdout.splitlines()
    packages = lines[lines.index('packages:') + 1:lines.index('command:')]
    return [p.strip() for p in packages], lines[lines.index('command:') + 1].strip()


def test_prepare_dry_run_targets_python_312_without_torch(tmp_path):
    packages, command = _dry_run(tmp_path)
    assert all(re.fullmatch(r'[A-Za-z0-9._-]+==[0-9A-Za-z.+!-]+', p) for p in packages), packages
    names = {p.split('==')[0].lower() for p in packages}
    assert {'mmengine', 'mmcv-lite', 'pytest', 'pillow', 'pyyaml', 'setuptools'} <= names
    assert not names & {'torch', 'triton', 'mmcv', 'mmdet', 'mmsegmentation', 'numpy',
                        'opencv-python', 'opencv-python-headless'}
    for option in ('pip download', '--only-binary=:all:', '--python-version 3.12',
                   '--implementation cp', '--platform manylinux2014_x86_64', '--no-deps'):
        assert option in command, option
    assert command.endswith(' '.join(packages)), 'downloads exactly the listed packages'


def test_prepare_full_adds_numpy_and_opencv(tmp_path):
    packages, _ = _dry_run(tmp_path)
    full, command = _dry_run(tmp_path, '--full')
    assert {p.split('==')[0] for p in set(full) - set(packages)} == {
        'numpy', 'opencv-python-headless'}
    assert 'torch' not in command.split()


def _requirement_names(dist: str) -> set:
    """Names of what ``dist`` (installed) requires, extras and other platforms left out."""
    names = set()
    for req in importlib.metadata.requires(dist) or []:
        name, _, marker = req.partition(';')
        if 'extra ==' in marker or 'sys_platform == "win32"' in marker:
            continue
        names.add(re.split(r'[<>=!~ \[(]', name.strip(), 1)[0].lower().replace('_', '-'))
    return names


_PROBE = """
import sys
for name in ['mmdet', 'mmseg'] + sys.argv[1:]:  # mmdet, mmseg: not installed there
    sys.modules[name] = None
sys.path[:0] = [{root!r}, {tests!r}, {tier!r}, {analysis!r}]
import pytest, mmtransnext, reference, gpu_helpers, gpu_benchmark
import mmtransnext.ops.triton_attention, mmtransnext.ops.triton_kernels
for name, module in list(sys.modules.items()):
    path = getattr(module, '__file__', None) or ''
    if 'site-packages' in path and '.' not in name:
        print(name)
""".format(root=ROOT, tests=osp.join(ROOT, 'tests'), tier=osp.join(ROOT, 'tests', 'gpu'),
           analysis=osp.join(TOOLS, 'analysis'))


def _imported_outside(allowed: set, blocked=()) -> list:
    """Top-level modules from site-packages that the check's imports load (with ``blocked``
    made unimportable) whose distributions are not ``allowed``."""
    result = subprocess.run([sys.executable, '-c', _PROBE, *blocked], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    to_dist = importlib.metadata.packages_distributions()
    outside = []
    for module in result.stdout.split():
        if module.startswith(('__editable__', '_distutils_hack', 'mmtransnext')):
            continue
        dists = {d.lower().replace('_', '-') for d in to_dist.get(module, [module])}
        if not dists & allowed:
            outside.append(module)
    return outside


def test_the_wheel_list_covers_what_the_check_imports():
    """What the gpu tier and the benchmark import, with mmdet and mmseg absent (as on the GPU
    machine), imports from wheels.txt and torch/triton and what they require alone: anything
    else they load here (optional imports, e.g. torch's of colorama) must not be needed."""
    listed = {line.split('==')[0].strip().lower() for line in open(WHEELS)
              if line.split('#')[0].strip()}
    # mmcv-lite is mmcv's Python part; cv2 comes from either OpenCV wheel.
    allowed = listed | {'mmcv', 'opencv-python'}
    todo = ['torch', 'triton']
    while todo:  # the machine's torch and triton bring these
        dist = todo.pop()
        if dist in allowed:
            continue
        allowed.add(dist)
        try:
            todo.extend(_requirement_names(dist))
        except importlib.metadata.PackageNotFoundError:
            pass
    optional = _imported_outside(allowed)
    assert _imported_outside(allowed, blocked=optional) == []


# ----------------------------------------------------------------------------- installer
def test_offline_install_plan(tmp_path, monkeypatch):
    inst = gpu_check_module('offline_install')
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    for name in ('mmengine-0.10.7-py3-none-any.whl', 'PyYAML-6.0.4-cp312-cp312-x.whl',
                 'pytest-9.2.0-py3-none-any.whl', 'pip-26.3-py3-none-any.whl'):
        (wheels / name).write_text('')
    listing = tmp_path / 'wheels.txt'
    listing.write_text('mmengine==0.10.7  # always: pinned\npyyaml==6.0.4\npytest==9.2.0\n'
                       'addict==2.4.0\nnumpy==1.26.4  # full\npip==26.3  # fallback\n')
    installed = {'mmengine': '0.9.0', 'pytest': '8.3.0', 'numpy': '2.5.2'}
    monkeypatch.setattr(inst, 'installed_version', installed.get)
    entries = inst.read_list(str(listing))
    assert [e.tag for e in entries] == ['always', '', '', '', 'full', 'fallback']
    install, lines = inst.plan(entries, str(wheels))
    assert [e.name for e in install] == ['mmengine', 'pyyaml']
    report = '\n'.join(lines)
    assert "mmengine==0.10.7: install (over the machine's 0.9.0)" in report
    assert "pytest: the machine's 8.3.0" in report
    assert 'addict==2.4.0: MISSING from the wheels' in report
    assert "numpy: the machine's 2.5.2" in report
    assert 'pip: not installed' in report


def test_the_wheel_list_parses():
    inst = gpu_check_module('offline_install')
    entries = inst.read_list(WHEELS)
    names = [e.name.lower() for e in entries]
    assert len(names) == len(set(names))
    assert {e.name for e in entries if e.tag == 'always'} >= {'mmengine', 'mmcv-lite'}


# ----------------------------------------------------------------------------- gpu tier
def _pytest(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'pytest', *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


@no_gpu
def test_gpu_tier_runs_standalone_and_skips_with_its_reason(tmp_path):
    """As tools/gpu_check.sh runs it (without tests/conftest.py: --confcutdir): every module
    imports, every backend is there, and without a GPU each test skips and says why."""
    junit = tmp_path / 'junit.xml'
    result = _pytest('tests/gpu', '-m', 'gpu', '--confcutdir', 'tests/gpu', '-q',
                     '--junitxml', str(junit))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tests = gpu_check_module('summarize').read_junit(str(tmp_path))
    assert tests['total'] >= 100 and tests['skipped'] == tests['total']
    assert list(tests['skip_reasons']) == [
        'gpu tier: no CUDA device (torch.cuda.is_available() is False); tools/gpu_check.sh '
        '--run runs it on a GPU machine']
    names = junit.read_text()
    for module in ('test_gpu_attention_layers', 'test_gpu_backbone', 'test_gpu_window_ops',
                   'test_gpu_pooled_attention', 'test_gpu_devices'):
        assert f'tests.gpu.{module}' in names, module
    for backend in ('reference', 'torch', 'ext', 'triton', 'auto'):
        assert f'-{backend}-' in names, backend


@no_gpu
def test_gpu_tier_is_in_the_default_selection_and_skips():
    """pytest.ini's selection includes the tier (with tests/conftest.py), where it skips; its
    modules collect next to the CPU suite's (no clash of module names)."""
    result = _pytest('tests/gpu', 'tests/test_ops', '-q', '-rs', '-k',
                     'auto_picks or second_gpu')
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r'\b4 skipped\b', summary) and 'passed' not in summary, summary
    assert 'gpu tier: no CUDA device (torch.cuda.is_available() is False)' in result.stdout


# ----------------------------------------------------------------------------- benchmark
def test_benchmark_dry_run_on_cpu_writes_results(tmp_path):
    out = tmp_path / 'benchmark.json'
    # Without TRITON_INTERPRET (tests/conftest.py sets it): the Triton kernels cannot run here.
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, osp.join(TOOLS, 'analysis', 'gpu_benchmark.py'),
                             '--device', 'cpu', '--dry-run', '--out', str(out)],
                            capture_output=True, text=True, cwd=str(tmp_path), timeout=600,
                            env=dict(env, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data['complete'] and data['environment']['device'] == 'cpu'
    cases = data['cases']
    assert len(cases) == 2 * 2 * 3  # tasks x dtypes x implementations
    for case in cases:
        if case['impl'] == 'triton':  # CUDA only
            assert case['status'] == 'skipped' and 'CUDA' in case['note']
            continue
        assert case['status'] == 'ok', case
        assert case['median_ms'] > 0 and len(case['times_ms']) == 2
        assert case['batch'] == (1 if case['task'] == 'infer' else 2)
        assert case['speedup'] == 1.0 if case['impl'] == 'reference' else case['speedup'] > 0
    assert {c['attn_impl'] for c in cases if c['impl'] == 'fast'} <= {'ext', 'torch'}
    rows = [line for line in result.stdout.splitlines() if line.startswith('| 64x96 |')]
    assert len(rows) == len(cases)


def test_benchmark_speedups_and_table():
    bench = load_tool('gpu_benchmark')
    cases = [dict(size=[8, 8], task='infer', batch=1, dtype='bf16', impl='reference',
                  status='ok', median_ms=30.0, peak_mb=900.0),
             dict(size=[8, 8], task='infer', batch=1, dtype='bf16', impl='triton',
                  status='ok', median_ms=10.0, peak_mb=100.0, attn_impl='triton'),
             dict(size=[8, 8], task='infer', batch=1, dtype='fp32', impl='triton',
                  status='ok', median_ms=10.0),  # no fp32 reference: no speed-up
             dict(size=[8, 8], task='train', batch=2, dtype='bf16', impl='reference',
                  status='oom', note='CUDA out of memory.')]
    bench.add_speedups(cases)
    assert [c.get('speedup') for c in cases] == [1.0, 3.0, None, None]
    table = bench.format_table(cases).splitlines()
    assert table[0].startswith('| input | task | batch | dtype | impl |')
    assert '| 8x8 | infer | 1 | bf16 | triton | triton | 10.00 | 100.0 | - | 3.00x | ok |' \
        in table
    assert table[-1].endswith('| oom: CUDA out of memory. |')


# ----------------------------------------------------------------------------- summary
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="1" skipped="1" tests="3"><testcase classname="tests.gpu.test_a" name="test_ok"
time="0.1"/><testcase classname="tests.gpu.test_a" name="test_skip" time="0"><skipped
type="pytest.skip" message="one CUDA device here">skip</skipped></testcase><testcase
classname="tests.gpu.test_b" name="test_bad[triton]" time="0.2"><failure message="AssertionError:
dq (torch.bfloat16): max error 0.5 &gt; 0.03">trace</failure></testcase><testcase time="0.000" />
</testsuite></testsuites>
"""

# The shape of `ncu --csv --page details` (Nsight Compute's documented CSV columns).
NCU = ('==PROF== Disconnected\n'
       '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
       '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
       '"Metric Value"\n'
       '"0","1","python","host","_attention_fwd","1","7","(256, 1, 1)","(950, 3, 1)","0","9.0",'
       '"GPU Speed Of Light Throughput","Duration","us","812.45"\n'
       '"0","1","python","host","_attention_fwd","1","7","(256, 1, 1)","(950, 3, 1)","0","9.0",'
       '"Occupancy","Achieved Occupancy","%","11.9"\n'
       '"0","1","python","host","_attention_fwd","1","7","(256, 1, 1)","(950, 3, 1)","0","9.0",'
       '"Occupancy","Waves Per SM","","1.2"\n')


def _out(tmp_path, steps, junit=True, ncu=False):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'steps.tsv').write_text(''.join('\t'.join(map(str, s)) + '\n' for s in steps))
    if junit:
        (out / 'junit.xml').write_text(JUNIT)
    if ncu:
        (out / 'ncu.csv').write_text(NCU)
    return out


def _summarize(out, final=True):
    return subprocess.run([sys.executable, osp.join(TOOLS, 'gpu_check', 'summarize.py'),
                           str(out)] + (['--final'] if final else []), capture_output=True,
                          text=True, timeout=60)


def test_summary_fails_on_a_failed_step_and_failed_tests(tmp_path):
    steps = [('gpu', 'passed', 0, 0, 'NVIDIA H100, 9.0'), ('install', 'passed', 9, 45, ''),
             ('build', 'failed', 30, 100, 'TORCH_CUDA_ARCH_LIST=9.0'),
             ('tests:test_a', 'passed', 80, 160, ''), ('tests:test_b', 'failed', 80, 160, ''),
             ('benchmark', 'timed out', 60, 110, ''),
             ('profile', 'failed', 5, 40, '/usr/local/cuda/bin/ncu')]
    out = _out(tmp_path, steps, ncu=True)
    result = _summarize(out)
    assert result.returncode == 1
    data = json.loads((out / 'results.json').read_text())
    assert data['verdict']['state'] == 'FAIL'
    problems = '\n'.join(data['verdict']['problems'])
    assert 'build: failed (TORCH_CUDA_ARCH_LIST=9.0)' in problems
    assert 'tests: 1 failed, 0 errors' in problems and 'tests:test_b: failed' in problems
    assert 'profile' not in problems and 'benchmark' not in problems  # informative steps
    assert data['tests']['skip_reasons'] == {'one CUDA device here': 1}
    assert data['tests']['total'] == 3  # not the nameless stub of an interrupted test
    md = (out / 'results.md').read_text()
    assert '**Verdict: FAIL**' in md and '1 x one CUDA device here' in md
    assert '`tests.gpu.test_b::test_bad[triton]` (failure): AssertionError:' in md
    assert '| _attention_fwd | (256, 1, 1) | (950, 3, 1) | 812.45 us | 11.9 % |' in md
    assert 'No benchmark.json' in md


def test_summary_passes_and_reports_progress(tmp_path):
    junit = JUNIT.replace('failures="1"', 'failures="0"')
    junit = re.sub(r'<testcase\s+classname="tests.gpu.test_b".*?</testcase>', '', junit,
                   flags=re.S)
    plan = [('gpu', 'passed', 0, 0, '')] + [(name, 'planned', 0, 100, '') for name in (
        'install', 'build', 'tests:test_a', 'benchmark', 'profile')]
    out = _out(tmp_path, plan + [('install', 'passed', 9, 45, '')], junit=False)
    assert _summarize(out, final=False).returncode == 0
    data = json.loads((out / 'results.json').read_text())
    assert data['verdict']['state'] == 'RUNNING'
    assert [(s['name'], s['status']) for s in data['steps']] == [
        ('gpu', 'passed'), ('install', 'passed'), ('build', 'not reached'),
        ('tests:test_a', 'not reached'), ('benchmark', 'not reached'),
        ('profile', 'not reached')]
    result = _summarize(out)  # killed after the install: the rest did not run
    assert result.returncode == 1 and 'INCOMPLETE' in result.stdout
    assert 'build: not reached' in result.stdout and 'benchmark' not in result.stdout
    with open(out / 'steps.tsv', 'a') as f:
        for name in ('build', 'tests:test_a'):
            f.write(f'{name}\tpassed\t1\t100\t\n')
        f.write('benchmark\ttimed out\t40\t40\t\n')  # informative: no effect on the verdict
        f.write('profile\tskipped\t0\t0\tno ncu on this machine\n')
    (out / 'junit.xml').write_text(junit)
    (out / 'benchmark.json').write_text(json.dumps(dict(
        arch='tiny', mode='interpolation', runs=5, warmup=2, complete=True,
        environment=dict(name='NVIDIA H100', torch='2.11', triton='3.6'),
        cases=[dict(size=[512, 512], task='infer', batch=1, dtype='bf16', impl='triton',
                    status='ok', median_ms=3.5, speedup=4.2)])))
    result = _summarize(out)
    assert result.returncode == 0, result.stdout
    md = (out / 'results.md').read_text()
    assert '**Verdict: PASS**' in md and '| 512x512 | infer | 1 | bf16 | triton |' in md


def test_summary_merges_the_junit_of_each_test_file(tmp_path):
    """One JUnit file per test file (each its own process) merged into junit.xml; a file whose
    process died without one shows as its failed step."""
    out = _out(tmp_path, [('gpu', 'passed', 0, 0, ''), ('install', 'passed', 1, 30, ''),
                          ('build', 'skipped', 0, 0, 'GPU_CHECK_BUILD=0'),
                          ('tests:test_a', 'passed', 3, 140, ''),
                          ('tests:test_b', 'failed', 1, 137, 'killed by signal 11')],
               junit=False)
    junit = tmp_path / 'junit'
    junit.mkdir()
    (junit / 'test_a.xml').write_text(JUNIT.replace('failures="1"', 'failures="0"').replace(
        '<failure', '<skipped').replace('</failure>', '</skipped>'))
    (junit / 'broken.xml').write_text('<testsuites><testsuite')  # cut off mid-write
    result = subprocess.run([sys.executable, osp.join(TOOLS, 'gpu_check', 'summarize.py'),
                             str(out), '--final', '--junit-dir', str(junit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    data = json.loads((out / 'results.json').read_text())
    assert data['verdict']['state'] == 'FAIL'
    assert data['verdict']['problems'] == ['tests:test_b: failed (killed by signal 11)']
    assert data['tests']['total'] == 3 and data['tests']['passed'] == 1
    merged = (out / 'junit.xml').read_text()
    assert 'name="test_a"' in merged and 'broken' not in merged


# ----------------------------------------------------------------------------- steps
def _steps(tmp_path, script: str, budget: int) -> subprocess.CompletedProcess:
    """The check's step functions, sourced, run ``script`` with a budget of ``budget`` s."""
    out, work = tmp_path / 'out', tmp_path / 'work'
    out.mkdir()
    (work / 'junit').mkdir(parents=True)
    prologue = (f'source "{SCRIPT}" --functions; OUT="{out}"; WORK="{work}"; '
                f'LOG="{out}/log.txt"; MODE=run; BUDGET={budget}; T0=$SECONDS; ')
    return subprocess.run(['bash', '-c', prologue + script], capture_output=True, text=True,
                          timeout=120)


def test_a_step_cut_by_its_limit_keeps_what_ran_before(tmp_path):
    """A step past its limit is recorded as timed out, the results of the steps before it
    stay, a step that no longer fits the budget is not reached, and results.md says so after
    each step."""
    plan = ''.join(f"printf '{n}\\tplanned\\t0\\t9\\t\\n' >> $OUT/steps.tsv; "
                   for n in ('gpu', 'install', 'build', 'tests:test_a'))
    result = _steps(tmp_path, plan + 'step gpu 5 true; step install 1 sleep 20; '
                    'step build 60 sleep 4; step tests:test_a 60 true; summarize --final', 8)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads((tmp_path / 'out' / 'results.json').read_text())
    steps = {s['name']: s for s in data['steps']}
    assert steps['gpu']['status'] == 'passed'
    assert steps['install']['status'] == 'timed out' and steps['install']['limit_s'] == 1
    assert steps['build']['status'] in ('passed', 'timed out') and steps['build']['limit_s'] <= 7
    assert steps['tests:test_a']['status'] == 'not reached'
    assert 'budget was spent' in steps['tests:test_a']['note']
    assert data['verdict']['state'] == 'INCOMPLETE'
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert '| install |' in md and 'timed out' in md and '| tests:test_a |' in md


def test_the_sanitizer_step_fails_on_a_report_and_skips_a_refusal(tmp_path):
    """compute-sanitizer's exit on an error (or the script not finishing) fails the step; its
    refusal of the device (gVisor) is a skip, said in the note."""
    fake = tmp_path / 'compute-sanitizer'
    fake.write_text('#!/bin/sh\ncase "$SANITIZER_MODE" in\n'
                    '  ok) echo "sanitize_ops: done"; echo "========= ERROR SUMMARY: 0 errors";;\n'
                    '  error) echo "========= Invalid __global__ read"; exit 86;;\n'
                    '  refused) echo "========= Error: Device not supported"; exit 1;;\n'
                    'esac\n')
    fake.chmod(0o755)
    modes = dict(memcheck='ok', racecheck='error', synccheck='refused')
    script = ''.join(f'SANITIZER_MODE={mode} sanitizer_step {tool} 30 "{fake}" python3; '
                     for tool, mode in modes.items())
    result = subprocess.run(['bash', '-c', f'source "{SCRIPT}" --functions; ' +
                             f'OUT="{tmp_path}"; WORK="{tmp_path}"; LOG="{tmp_path}/log.txt"; '
                             f'mkdir -p "$WORK/junit"; MODE=run; BUDGET=100; T0=$SECONDS; '
                             + script + 'true', SCRIPT],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    steps = {s['name']: s for s in json.loads((tmp_path / 'results.json').read_text())['steps']}
    assert steps['sanitizer:memcheck']['status'] == 'passed'
    assert steps['sanitizer:memcheck']['note'] == 'ERROR SUMMARY: 0 errors'
    assert steps['sanitizer:racecheck']['status'] == 'failed'
    assert steps['sanitizer:racecheck']['note'] == 'Invalid __global__ read'
    assert steps['sanitizer:synccheck']['status'] == 'skipped'
    assert steps['sanitizer:synccheck']['note'].startswith('Error: Device not supported')


# ----------------------------------------------------------------------------- interpreter
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_sanitizer_script_runs_every_kernel_in_the_interpreter():
    """tools/gpu_check/sanitize_ops.py's calls, on the CPU with the Triton kernels interpreted
    (tests/conftest.py sets TRITON_INTERPRET=1) and the compiled window ops' CPU kernels."""
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'gpu_check', 'sanitize_ops.py'), '--device', 'cpu',
         '--dtypes', 'fp32', '--batch', '1', '--aggregated-size', '8x9', '--full-size', '2x3',
         '--window-size', '3x4'], capture_output=True, text=True, cwd=ROOT, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == 'sanitize_ops: done'
    assert sum('triton' in line and 'forward and backward' in line for line in lines) == 2
    assert any(line.startswith('sanitize_ops: compiled window ops') for line in lines)


@pytest.fixture
def kernel_tests(monkeypatch):
    """tests/gpu/test_gpu_triton_kernels.py as a module, its cases shrunk for the interpreter
    (float32 only: Triton's interpreter multiplies bfloat16 as integers)."""
    import importlib
    monkeypatch.syspath_prepend(osp.join(ROOT, 'tests'))
    monkeypatch.syspath_prepend(osp.join(ROOT, 'tests', 'gpu'))
    module = importlib.import_module('test_gpu_triton_kernels')
    module.cases_cover_pairs_tiles_and_both_folds()  # on the real cases
    monkeypatch.setattr(module, 'CASES', {
        'aggregated-columns': ('aggregated', (3, 5), (2, 2), ((8, 8), (4, 4)), 'columns')})
    return module


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_gpu_kernel_helpers_in_the_interpreter(kernel_tests):
    """The run-twice and items-alone checks of the gpu tier pass on the interpreted kernels
    (which run in order: same bits), and fail on a changed bit or a wrong item."""
    cpu, case = torch.device('cpu'), 'aggregated-columns'
    inputs = kernel_tests.case_inputs(case, 3)
    first = kernel_tests.run_kernels(case, inputs, torch.float32, cpu)
    second = kernel_tests.run_kernels(case, inputs, torch.float32, cpu)
    assert set(first) >= {'out', 'dq', 'dk_pool', 'dv_pool', 'dfolded', 'dembedding'}
    kernel_tests.assert_same_bits(first, second)
    second['dq'] = second['dq'].clone()
    second['dq'].view(-1)[7] = torch.nextafter(second['dq'].view(-1)[7], torch.tensor(1e9))
    with pytest.raises(AssertionError, match='dq: 1 of'):
        kernel_tests.assert_same_bits(first, second)
    kernel_tests.assert_items_match_alone(case, 3, torch.float32, cpu)


# ----------------------------------------------------------------------------- rehearsal
CUDA_HOME = os.environ.get('CUDA_HOME', '/usr/local/cuda')
#: The stand-in's Python (tools/gpu_check.sh: GPU_CHECK_STANDIN_BASE).
PYTHON_312 = os.environ.get('GPU_CHECK_STANDIN_BASE',
                            '/root/.pyenv/versions/3.12.1/bin/python3.12')
GPU_STEPS = ('gpu', 'build', 'sanitizer', 'tests', 'benchmark', 'profile')


@pytest.mark.slow
@pytest.mark.cuda_build
@pytest.mark.skipif(not osp.exists(osp.join(CUDA_HOME, 'bin', 'nvcc')),
                    reason=f'needs the CUDA toolkit (nvcc) in CUDA_HOME={CUDA_HOME}')
@pytest.mark.skipif(not osp.exists(PYTHON_312), reason=f'needs Python 3.12 at {PYTHON_312}')
def test_rehearsal_runs_every_step_that_needs_no_gpu(tmp_path):
    """``--rehearse``: a stand-in for the device image (torch 2.11, triton 3.6, numpy 2.5; made
    once per machine, a few GB, ~100 s cold), the wheel folder, the offline install, imports
    under numpy 2, the tier's collection, the Triton kernels for sm_90 with triton 3.6 (no
    spill) and the CUDA ops for sm_90; the GPU's steps "not reached: no GPU". About 6 minutes
    cold on 2 cores, 4 with the stand-in made."""
    work = tmp_path / 'rehearsal'
    env = {k: v for k, v in os.environ.items() if k not in ('TRITON_INTERPRET', 'PYTHONPATH')}
    result = subprocess.run(['bash', SCRIPT, '--rehearse', str(work)], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=3600)
    md = (work / 'out' / 'results.md').read_text()
    data = json.loads((work / 'out' / 'results.json').read_text())
    steps = {s['name']: s for s in data['steps']}
    for name in GPU_STEPS:
        assert (steps[name]['status'], steps[name]['note']) == ('not reached', 'no GPU'), name
    assert 'the rehearsal cannot reach (no GPU here)' in result.stdout
    assert result.returncode == 0 and data['verdict']['state'] == 'PASS', md
    log = (work / 'out' / 'log.txt').read_text()
    assert re.search(r'imports: mmtransnext .* numpy 2\.5\.2 torch 2\.11\.0\S* triton 3\.6\.0',
                     log), log[-3000:]
    assert re.search(r'\b\d{3} tests collected', log)
    assert 'CPU kernels of the CUDA build match the reference' in log
