"""tools/analysis/benchmark_backbone.py: every case runs and the table's ratios are consistent."""
import csv
import json
import os.path as osp

import pytest
from tool_helpers import ROOT, load_tool, run_tool


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


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_benchmark_counts_launches_of_the_gpu_path(tmp_path):
    """The Triton implementation gets launches and memory (under a GPU's budgets) but no time;
    the fast path is still timed, and measured under both budgets; launch figures are in the
    JSON and the CSV (about 15 s: two subprocesses and a timing one)."""
    out = tmp_path / 'bench.json'
    proc = run_tool(['tools/analysis/benchmark_backbone.py', '--archs', 'micro', '--sizes',
                     '64x96', '--tasks', 'infer', '--modes', 'extrapolation', '--impls', 'fast',
                     'triton', '--runs', '1', '--threads', '1', '--also-gpu-budgets', '--out',
                     str(out)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'failed' not in proc.stdout and 'n/a' in proc.stdout
    assert 'gpu 80 GB' in proc.stdout and '1st AA fwd' in proc.stdout
    by_impl = {r['impl']: r for r in json.loads(out.read_text())['results']}
    fast, triton = by_impl['fast'], by_impl['triton']
    assert triton['time_s'] is None and fast['time_s'] > 0
    assert triton['budgets'] == 'gpu 80 GB' and fast['budgets'] == 'cpu'
    # Micro has 21 attention blocks: one Triton kernel each, nothing else launched by Triton.
    assert triton['launches_triton'] == 21 and fast['launches_triton'] == 0
    assert triton['launches'] == triton['launches_aten'] + 21 < fast['launches']
    assert triton['block_launches'] <= 25 and triton['host_syncs'] == 0
    assert triton['tensor_peak_mb'] > 0
    # Under the GPU's budgets the fast path's loops run whole: fewer launches at most, no
    # Triton kernel; the GPU path has no second measurement.
    assert fast['gpu_budgets'] == 'gpu 80 GB' and fast['gpu_launches_triton'] == 0
    assert 0 < fast['gpu_launches'] <= fast['launches'] and fast['gpu_tensor_peak_mb'] > 0
    assert 'gpu_launches' not in triton
    with open(osp.splitext(out)[0] + '.csv') as f:
        rows = {r['impl']: r for r in csv.DictReader(f)}
    assert rows['triton']['launches'] == str(triton['launches'])
    assert rows['triton']['time_s'] == ''


def test_fit_exponent_recovers_a_power_law():
    bench = load_tool('benchmark_backbone')
    pixels = [224 ** 2, 512 ** 2, 1280 ** 2]
    assert abs(bench.fit_exponent(pixels, [3e-6 * p for p in pixels]) - 1) < 1e-9
    assert abs(bench.fit_exponent(pixels, [2e-9 * p ** 2 for p in pixels]) - 2) < 1e-9


@pytest.mark.slow  # one subprocess, four small forwards each timed once
def test_scaling_compares_normal_and_linear_mode(tmp_path):
    out = tmp_path / 'scaling.json'
    proc = run_tool(['tools/analysis/benchmark_backbone.py', '--scaling', '--archs', 'micro',
                     '--scaling-sizes', '64', '128', '--fixed-pool-size', '2', '--runs', '1',
                     '--threads', '1', '--out', str(out)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'fitted exponent' in proc.stdout
    rows = json.loads(out.read_text())['scaling']
    assert [(r['size'], r['mode'], r['fixed_pool_size']) for r in rows] == [
        (64, 'normal', None), (64, 'linear', 2), (128, 'normal', None), (128, 'linear', 2)]
    for r in rows:
        assert 0 < r['attention_s'] <= r['time_s'] and r['tensor_peak_mb'] > 0
        assert set(r['exponents']) == {'time_s', 'attention_s', 'aggregated_s', 'tensor_peak_mb'}
