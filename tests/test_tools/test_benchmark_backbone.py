"""tools/analysis/benchmark_backbone.py: every case runs and the table's ratios are consistent."""
import csv
import json
import os.path as osp

import pytest
from tool_helpers import ROOT, run_tool


@pytest.mark.slow  # four subprocesses, about a minute
def test_benchmark_runs_every_case_and_writes_json_and_csv(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool(['tools/analysis/benchmark_backbone.py', '--archs', 'micro', '--sizes',
                     '64x96', '--train-sizes', '64x96', '--modes', 'extrapolation', '--runs',
                     '1', '--threads', '1', '--out', str(out)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'failed' not in proc.stdout and 'speed-up' in proc.stdout
    results = json.loads(out.read_text())['results']
    assert {(r['task'], r['impl']) for r in results} == {
        (task, impl) for task in ('infer', 'train') for impl in ('reference', 'fast')}
    for r in results:
        assert r['time_s'] > 0 and r['tensor_peak_mb'] > 0 and r['build_mb'] > 0
        if r['impl'] == 'reference':
            assert r['speedup'] == 1.0 and r['memory_ratio'] == 1.0 and r['flops'] > 0
    # The fast path holds less at its peak than the reference, even at this size.
    by_key = {(r['task'], r['impl']): r for r in results}
    for task in ('infer', 'train'):
        assert by_key[task, 'fast']['tensor_peak_mb'] < by_key[task, 'reference']['tensor_peak_mb']
    with open(osp.splitext(out)[0] + '.csv') as f:
        assert len(list(csv.DictReader(f))) == len(results)


@pytest.mark.slow  # two subprocesses
def test_benchmark_takes_transxnet(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool(['tools/analysis/benchmark_backbone.py', '--backbone', 'transxnet',
                     '--archs', 'tiny', '--sizes', '64x96', '--tasks', 'infer', '--runs', '1',
                     '--threads', '1', '--out', str(out)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result, ) = json.loads(out.read_text())['results']
    assert (result['backbone'], result['impl'], result['mode']) == \
        ('transxnet', 'default', 'interpolation')
    assert result['time_s'] > 0 and result['flops'] > 0 and result['tensor_peak_mb'] > 0
