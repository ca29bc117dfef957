"""Write the GPU check's verdict, ``results.md`` and ``results.json``, from what its steps left
in the output folder. Standard library only: it runs with any ``python3``, also when the check's
own environment could not be made. tools/gpu_check.sh calls it after every step, so a later
step that fails or is killed leaves the results so far.

Reads (each optional): ``steps.tsv`` (one line per step: name, status, seconds, time limit,
note; status ``planned`` for a step still to come, which is "not reached" if no result
follows), the JUnit XML of each test file (``--junit-dir``, merged into ``junit.xml``; else
``junit.xml``), ``benchmark.json`` (tools/analysis/gpu_benchmark.py), ``ncu.csv`` (Nsight
Compute, ``--csv --page details``).

    python3 tools/gpu_check/summarize.py OUT [--final] [--mode run|rehearse] [--junit-dir DIR]

The verdict (``--mode run``) is decided by the correctness steps (:data:`DECIDING`): FAIL when
one failed or a test failed, INCOMPLETE when none failed but one timed out or was not reached
(RUNNING before ``--final``), else PASS. A rehearsal (``--mode rehearse``) passes when each of
its steps passed (the GPU's are "not reached: no GPU"). Exit status with ``--final``: 0 on PASS,
else 1.
"""
import argparse
import csv
import json
import os
import os.path as osp
import sys
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict
from typing import Dict, List, Optional


def _gpu_benchmark():
    """tools/analysis/gpu_benchmark.py as a module, loaded from its file: it imports the standard
    library alone until it runs, which is all this script may rely on."""
    import importlib.util
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'analysis', 'gpu_benchmark.py')
    spec = importlib.util.spec_from_file_location('gpu_benchmark', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


format_table = _gpu_benchmark().format_table

#: What each step (or group of steps, ``group:part``) is, in the order they run.
STEPS = OrderedDict([
    ('gpu', 'a CUDA GPU and torch'),
    ('install', 'offline install into a fresh venv'),
    ('build', 'csrc CUDA ops built with nvcc'),
    ('sanitizer', 'compute-sanitizer on a small forward and backward of every kernel'),
    ('tests', 'gpu test tier, one process per file'),
    ('benchmark', 'TransNeXt-Tiny benchmark (informative)'),
    ('profile', 'Nsight Compute, one stage-1 Triton call (informative)'),
    # --rehearse
    ('standin', 'stand-in for the device image (cached venv)'),
    ('prepare', 'the wheel folder (--prepare)'),
    ('imports', 'mmtransnext, mmengine, mmcv-lite under numpy 2'),
    ('collect', 'collection of the gpu tier, the check\'s scripts load'),
    ('triton-sm90', 'Triton kernels compiled for sm_90 with the stand-in triton'),
    ('cuda-build-sm90', 'CUDA ops built for sm_90 with the stand-in torch'),
])
#: Steps whose outcome decides a ``run``'s verdict (the others are informative).
DECIDING = ('gpu', 'install', 'build', 'sanitizer', 'tests')
#: Steps a rehearsal runs (the GPU's are recorded "not reached: no GPU").
REHEARSAL = ('standin', 'prepare', 'install', 'imports', 'collect', 'triton-sm90',
             'cuda-build-sm90')
STATUSES = ('passed', 'failed', 'timed out', 'skipped', 'not reached')

#: Nsight Compute metrics shown per kernel (Metric Name as ncu prints it).
NCU_METRICS = ('Duration', 'Compute (SM) Throughput', 'Memory Throughput', 'DRAM Throughput',
               'Registers Per Thread', 'Theoretical Occupancy', 'Achieved Occupancy',
               'Block Limit Registers', 'Block Limit Shared Mem')


def read_steps(out: str) -> List[dict]:
    """One entry per step of ``steps.tsv``, in plan order: the last line of a name wins, and a
    step planned but without a result is "not reached"."""
    steps: Dict[str, dict] = OrderedDict()
    path = osp.join(out, 'steps.tsv')
    if osp.exists(path):
        with open(path) as f:
            for line in f:
                fields = line.rstrip('\n').split('\t')
                if len(fields) < 4 or not fields[0]:
                    continue
                name, status, seconds, limit = fields[:4]
                note = fields[4] if len(fields) > 4 else ''
                if status == 'planned':
                    status, note = 'not reached', note
                steps[name] = dict(name=name, status=status, seconds=float(seconds or 0),
                                   limit_s=float(limit or 0), note=note,
                                   group=name.split(':')[0])
    return list(steps.values())


def merge_junit(junit_dir: str, out: str) -> None:
    """The JUnit XML of each test file (``junit_dir/*.xml``) as one ``out/junit.xml``: one
    ``testsuite`` per file, named after it (unreadable files are left out, and said so by
    :func:`read_junit`'s counts)."""
    files = sorted(f for f in os.listdir(junit_dir) if f.endswith('.xml')) \
        if osp.isdir(junit_dir) else []
    if not files:
        return
    root = ET.Element('testsuites')
    for name in files:
        try:
            tree = ET.parse(osp.join(junit_dir, name)).getroot()
        except ET.ParseError:
            continue
        for suite in ([tree] if tree.tag == 'testsuite' else tree.iter('testsuite')):
            suite.set('name', name[:-len('.xml')])
            root.append(suite)
    tmp = osp.join(out, '.junit.xml.tmp')
    ET.ElementTree(root).write(tmp, encoding='utf-8', xml_declaration=True)
    os.replace(tmp, osp.join(out, 'junit.xml'))


def read_junit(out: str) -> Optional[dict]:
    path = osp.join(out, 'junit.xml')
    if not osp.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        return dict(error=f'junit.xml unreadable: {error}')
    counts = Counter()
    failures, skips = [], Counter()
    for case in root.iter('testcase'):
        if not case.get('name'):  # the stub pytest writes for a test interrupted by SIGINT
            continue
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        counts['total'] += 1
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error'):
                outcome = 'failed' if child.tag == 'failure' else 'errors'
                message = (child.get('message') or child.text or '').strip()
                failures.append(dict(test=name, kind=child.tag, message=message[:500]))
                break
            if child.tag == 'skipped':
                outcome = 'skipped'
                skips[(child.get('message') or '').strip()] += 1
                break
        counts[outcome] += 1
    return dict(total=counts['total'], passed=counts['passed'], failed=counts['failed'],
                errors=counts['errors'], skipped=counts['skipped'], failures=failures,
                skip_reasons=dict(skips.most_common()))


def read_benchmark(out: str) -> Optional[dict]:
    path = osp.join(out, 'benchmark.json')
    if not osp.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as error:
        return dict(error=f'benchmark.json unreadable: {error}')


def read_ncu(out: str) -> Optional[List[dict]]:
    """Per profiled kernel: its name, launch configuration and the metrics of
    :data:`NCU_METRICS` (value with unit), from ``ncu --csv --page details``."""
    path = osp.join(out, 'ncu.csv')
    if not osp.exists(path):
        return None
    with open(path, newline='') as f:
        lines = [line for line in f if line.startswith('"')]  # no ==PROF== lines
    kernels: Dict[str, dict] = OrderedDict()
    for row in csv.DictReader(lines):
        key = row.get('ID', '')
        kernel = kernels.setdefault(key, dict(
            kernel=row.get('Kernel Name', '?'), block=row.get('Block Size', ''),
            grid=row.get('Grid Size', ''), metrics=OrderedDict()))
        metric = row.get('Metric Name', '')
        if metric in NCU_METRICS:
            unit = row.get('Metric Unit', '')
            kernel['metrics'][metric] = f"{row.get('Metric Value', '')} {unit}".strip()
    return list(kernels.values())


def verdict(steps: List[dict], tests: Optional[dict], final: bool,
            mode: str = 'run') -> Dict[str, object]:
    """The state (PASS, FAIL, INCOMPLETE; RUNNING before ``final``) and why."""
    deciding = DECIDING if mode == 'run' else REHEARSAL
    problems, missing, failed = [], [], False
    for step in steps:
        if step['group'] not in deciding:
            continue
        status = step['status']
        if status in ('passed', 'skipped'):
            continue
        if status == 'not reached':
            missing.append(step['name'])
            continue
        failed = failed or status == 'failed'
        problems.append(f"{step['name']}: {status}" + (f" ({step['note']})"
                                                      if step['note'] else ''))
    if mode == 'run' and tests is not None and 'error' not in tests:
        if tests['failed'] or tests['errors']:
            failed = True
            problems.append(f"tests: {tests['failed']} failed, {tests['errors']} errors")
        ran = any(s['group'] == 'tests' and s['status'] != 'not reached' for s in steps)
        if ran and not tests['passed']:
            problems.append('tests: none passed')
    if final:
        problems += [f'{name}: not reached' for name in missing]
    if failed:
        state = 'FAIL'
    elif problems or (missing and final):
        state = 'INCOMPLETE'
    elif missing:
        state = 'RUNNING'
    else:
        state = 'PASS'
    return dict(state=state, problems=problems)


def render(result: dict) -> str:
    title = 'GPU check' if result.get('mode', 'run') == 'run' else \
        'GPU check rehearsal (no GPU: the GPU steps are not reached)'
    lines = [f'# {title}', '', f"**Verdict: {result['verdict']['state']}**", '']
    for problem in result['verdict']['problems']:
        lines.append(f'- {problem}')
    lines += ['', '## Steps', '', '| step | what | status | seconds | limit s | note |',
              '|---|---|---|---|---|---|']
    for step in result['steps']:
        lines.append(f"| {step['name']} | {STEPS.get(step['group'], '')} | {step['status']} | "
                     f"{step['seconds']:.0f} | {step['limit_s']:.0f} | {step['note']} |")
    tests = result.get('tests')
    lines += ['', '## gpu test tier', '']
    if tests is None:
        lines.append('No JUnit XML: no test file ran.')
    elif 'error' in tests:
        lines.append(tests['error'])
    else:
        lines.append(f"{tests['total']} tests: {tests['passed']} passed, {tests['failed']} "
                     f"failed, {tests['errors']} errors, {tests['skipped']} skipped.")
        if tests['failures']:
            lines += ['', 'Failures:', '']
            for failure in tests['failures']:
                first = failure['message'].splitlines()[0] if failure['message'] else ''
                lines.append(f"- `{failure['test']}` ({failure['kind']}): {first}")
        if tests['skip_reasons']:
            lines += ['', 'Skipped:', '']
            for reason, count in tests['skip_reasons'].items():
                lines.append(f'- {count} x {reason}')
    bench = result.get('benchmark')
    lines += ['', '## Benchmark', '']
    if bench is None:
        lines.append('No benchmark.json: the benchmark did not run.')
    elif 'error' in bench:
        lines.append(bench['error'])
    else:
        env = bench.get('environment', {})
        lines.append(f"TransNeXt-{bench.get('arch')} ({bench.get('mode')}) on "
                     f"{env.get('name', env.get('device', '?'))}, torch {env.get('torch')}, "
                     f"triton {env.get('triton')}; median of {bench.get('runs')} timed calls "
                     f"after {bench.get('warmup')} warm-up calls"
                     + ('' if bench.get('complete') else '; **stopped before the end**') + '.')
        lines += ['', format_table(bench.get('cases', []))]
    kernels = result.get('profile')
    lines += ['', '## Nsight Compute: one stage-1 Triton call', '']
    if not kernels:
        lines.append('No profile (see the profile step).')
    else:
        names = [m for m in NCU_METRICS if any(m in k['metrics'] for k in kernels)]
        lines += ['| kernel | block | grid | ' + ' | '.join(names) + ' |',
                  '|---|---|---|' + '---|' * len(names)]
        for k in kernels:
            short = k['kernel'].split('(')[0]
            lines.append(f"| {short} | {k['block']} | {k['grid']} | "
                         + ' | '.join(k['metrics'].get(m, '-') for m in names) + ' |')
    return '\n'.join(lines) + '\n'


def summarize(out: str, final: bool = False, mode: str = 'run',
              junit_dir: Optional[str] = None) -> dict:
    if junit_dir:
        merge_junit(junit_dir, out)
    steps = read_steps(out)
    tests = read_junit(out)
    result = dict(mode=mode, steps=steps, tests=tests, benchmark=read_benchmark(out),
                  profile=read_ncu(out))
    result['verdict'] = verdict(steps, tests, final, mode)
    for name, text in (('results.json', json.dumps(result, indent=1)),
                       ('results.md', render(result))):
        tmp = osp.join(out, f'.{name}.tmp')
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, osp.join(out, name))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out')
    parser.add_argument('--final', action='store_true')
    parser.add_argument('--mode', choices=['run', 'rehearse'], default='run')
    parser.add_argument('--junit-dir', help='JUnit XML of each test file, merged into junit.xml')
    args = parser.parse_args()
    result = summarize(args.out, args.final, args.mode, args.junit_dir)
    if args.final:
        print(f"gpu_check: {result['verdict']['state']}"
              + ''.join(f"\n  - {p}" for p in result['verdict']['problems']))
        return 0 if result['verdict']['state'] == 'PASS' else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
