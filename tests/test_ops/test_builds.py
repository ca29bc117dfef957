"""Builds of the compiled ops other than the installed one: the JIT build is opt-in
(`pytest -m slow`); the CUDA build runs by default (marker ``cuda_build``, see pytest.ini).

- The JIT build that a source tree without ``mmtransnext._ext`` falls back to (~1 min cold).
- The CUDA build (tools/check_cuda_build.sh), compiled and linked without a GPU against the
  project environment's CUDA torch, for one arch (~6 min on 2 cores the first time on a
  machine; later runs, cached in ~/.cache/mmtransnext, take ~15 s).
- The Triton kernels (tools/check_triton_build.py): the specialisations training steps launch,
  compiled for sm_80 and sm_90 and judged (~3 min on 2 idle cores).
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_HOME = os.environ.get('CUDA_HOME', '/usr/local/cuda')


@pytest.mark.slow
def test_jit_build_loads_the_ops_when_the_built_module_is_missing(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.modules['mmtransnext._ext'] = None  # as if installed without the compiled ops
        import torch
        from mmtransnext.ops import backend_for, load_extension, window_qk
        from mmtransnext.ops.sliding_window import sliding_window_qk
        status = load_extension()
        assert status.loaded and status.source == 'jit', status
        q, k = torch.randn(2, 1, 2, 12, 4).unbind(0)
        rpb = torch.randn(2, 9)
        torch.testing.assert_close(window_qk(q, k, rpb, (3, 4), 3,
                                             backend=backend_for('ext', q)),
                                   sliding_window_qk(q, k, rpb, (3, 4), 3))
        """)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), MAX_JOBS='2',
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    env.pop('MMTRANSNEXT_JIT_BUILD', None)
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.cuda_build
@pytest.mark.skipif(not os.path.exists(os.path.join(CUDA_HOME, 'bin', 'nvcc')),
                    reason=f'needs the CUDA toolkit (nvcc) in CUDA_HOME={CUDA_HOME}')
def test_cuda_extension_compiles_links_and_registers_every_kernel():
    result = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'check_cuda_build.sh')],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stderr
    assert 'CPU and CUDA kernels registered for 4 ops' in log
    assert 'CPU kernels of the CUDA build match the reference' in log
    for kernel in ('window_dot_kernel', 'window_gather_kernel', 'bias_grad_kernel'):
        assert kernel in log, f'{kernel} is missing from the device code'


@pytest.mark.slow
@pytest.mark.cuda_build
def test_triton_kernels_compile_for_sm80_and_sm90():
    """tools/check_triton_build.py: every kernel specialisation a training step launches (every
    architecture, precision and bias mode at one size; recorded on fake CUDA tensors) compiled
    ahead of time to a cubin for sm_80 and sm_90 (~3 min on 2 idle cores) and judged: no spill,
    no fenced atomic, MMA instructions wherever a 16-bit step launches a kernel."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    env.pop('TRITON_INTERPRET', None)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'check_triton_build.py')],
                            env=env, capture_output=True, text=True, timeout=3600)
    lines = result.stdout.splitlines()
    problems = '\n'.join(line for line in lines if line.startswith('FAILED'))
    compiled = [re.search(r'(\d+) of (\d+) specialisations compiled', line) for line in lines]
    compiled = next((m for m in compiled if m), None)
    assert compiled and compiled.group(1) == compiled.group(2) and int(compiled.group(2)) > 0, \
        (result.stdout + result.stderr)[-4000:]
    for kernel in ('_attention_fwd', '_attention_bwd_query', '_attention_bwd_keys'):
        for arch in ('80', '90'):
            assert any(line.split()[1:3] == [kernel, arch] for line in lines if line[:1] == 'v'), \
                (kernel, arch)
    assert result.returncode == 0, problems[-4000:] or result.stderr[-4000:]
