"""tools/check_triton_build.py and its recording machinery
(``tools/triton_launches.py``, developer tooling): launches recorded from real training steps on
fake CUDA tensors, specialised as Triton's runtime does, compiled and read.

The recording tests run here, under ``TRITON_INTERPRET=1`` (the kernels are Triton's
``InterpretedFunction`` objects; they are never run). The compiling test needs the real
compiler, so it runs in a subprocess without that variable (marker ``cuda_build``).
"""
import faulthandler
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl
from tool_helpers import ROOT, load_tool
from triton_launches import (LaunchRecorder, TrainingCase, TrainingStepRecorder, cuda_autocast,
                             fake_cuda, launchable_kernels, run_backward, specialize)

KERNELS = {'_attention_fwd', '_attention_bwd_query', '_attention_bwd_keys'}


@triton.jit
def _copy(X, Y, n, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs * stride, tl.load(X + offs, mask=offs < n), mask=offs < n)


@triton.jit(do_not_specialize=['n'])
def _copy_any_n(X, Y, n, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs * stride, tl.load(X + offs, mask=offs < n), mask=offs < n)


@pytest.fixture(scope='module')
def tool():
    return load_tool('check_triton_build')


def _triton_own(value, specialize_value=True):
    """Triton's per-argument specialisation (the C++ function its launcher binds with)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    return native_specialize_impl(BaseBackend, value, False, specialize_value, True)


@pytest.mark.parametrize('value', [1, 0, 7, 16, 48, -32, 2 ** 31 + 16, 2 ** 31 + 3])
def test_ints_specialise_as_triton_does(value):
    spec = specialize(_copy, (torch.empty(4), torch.empty(4), value, 3), dict(BLOCK=16))
    kind, attr = _triton_own(value)
    if kind == 'constexpr':  # 1
        assert spec.constants['n'] == value and dict(spec.signature)['n'] == 'constexpr'
    else:
        assert dict(spec.signature)['n'] == kind
        assert ('n' in spec.divisible) == (attr == 'D')
    # do_not_specialize: neither made constexpr nor marked divisible, whatever the value
    spec = specialize(_copy_any_n, (torch.empty(4), torch.empty(4), value, 3), dict(BLOCK=16))
    assert dict(spec.signature)['n'] == _triton_own(value, specialize_value=False)[0]
    assert 'n' not in spec.divisible and 'n' not in spec.constants


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_tensor_offsets_specialise_as_triton_does_on_real_tensors(dtype):
    base = torch.empty(64, dtype=dtype)
    assert base.data_ptr() % 16 == 0  # the stand-ins assume an aligned storage, as here
    meta = torch.empty(64, dtype=dtype, device='meta')
    for offset in range(9):
        kind, attr = _triton_own(base[offset:])
        for tensor in (base[offset:], meta[offset:]):
            spec = specialize(_copy, (tensor, base, 5, 3), dict(BLOCK=16))
            assert dict(spec.signature)['X'] == kind
            assert ('X' in spec.divisible) == (attr == 'D'), (dtype, offset)


def test_recorder_intercepts_launches_and_restores_the_kernels():
    """Launches through the ops' launcher (``launch_kernel``, as the ops launch) are recorded,
    not run; the kernels themselves are never touched, and after the block launches run."""
    from mmtransnext.ops.device import launch_kernel
    x, y = torch.arange(8.), torch.zeros(8)
    with LaunchRecorder() as recorder:
        launch_kernel(_copy, (2,))(x, y, 8, 1, BLOCK=4)
        launch_kernel(_copy_any_n, lambda meta: (triton.cdiv(meta['n'], meta['BLOCK']),))(
            x, y, 8, 1, BLOCK=2)
    assert torch.equal(y, torch.zeros(8))  # recorded, not run
    assert 'run' not in vars(_copy) and 'run' not in vars(_copy_any_n)
    first, second = recorder.launches
    assert (first.spec.kernel, first.grid) == ('_copy', (2,))
    assert (second.spec.kernel, second.grid) == ('_copy_any_n', (4,))
    assert first.spec.constants == {'stride': 1, 'BLOCK': 4}
    launch_kernel(_copy, (2,))(x, y, 8, 1, BLOCK=4)  # the interpreter runs it again
    assert torch.equal(y, x)


def test_run_backward_matches_the_autograd_engine():
    class Scale(torch.autograd.Function):  # a non-tensor argument and a constant tensor
        @staticmethod
        def forward(ctx, x, factor, offset, y):
            ctx.save_for_backward(x, y)
            ctx.factor = factor
            return x * factor * y + offset

        @staticmethod
        def backward(ctx, grad):
            x, y = ctx.saved_tensors
            return grad * ctx.factor * y, None, None, (grad * ctx.factor * x).sum(0)

    linear = torch.nn.Linear(6, 5)
    x = torch.randn(4, 3, 6, requires_grad=True)
    y = torch.randn(3, 5, requires_grad=True)
    offset = torch.randn(5)

    def loss():
        h = linear(x)  # (4, 3, 5)
        z = Scale.apply(h.transpose(0, 1).reshape(3, 20).view(3, 4, 5).transpose(0, 1), 2.,
                        offset, y)
        return (z * h.sum()).sum() + h.double().pow(2).mean().float() + z[:, :2].exp().sum()

    leaves = [x, y, linear.weight, linear.bias]
    expected = torch.autograd.grad(loss(), leaves)
    got = run_backward(loss())
    assert set(map(id, got)) == set(map(id, leaves))
    for leaf, grad in zip(leaves, expected):
        torch.testing.assert_close(got[leaf], grad)


def test_cuda_autocast_applies_to_fake_cuda_tensors():
    linear = torch.nn.Linear(8, 8)
    with fake_cuda():
        linear.to('cuda')
        x = torch.empty(2, 8, device='cuda')
        with cuda_autocast(torch.bfloat16):
            assert linear(x).dtype == torch.bfloat16
            assert torch.nn.functional.normalize(x, dim=-1).dtype == torch.float32
        assert linear(x).dtype == torch.float32 and not torch.is_autocast_enabled('cuda')


STEPS = {
    'tf32': TrainingCase('micro', 'tf32', False, (64, 96)),
    'extrapolation': TrainingCase('micro', 'fp32', True, (64, 64)),
    'extrapolation wider': TrainingCase('micro', 'fp32', True, (64, 80)),
    # stage 1 a 40x24 map: its rows scale the 800x800 table's 200 rows by 1/5 (one tap), its
    # columns by 3/25 (four taps): the columns are folded
    'columns': TrainingCase('micro', 'fp32', False, (160, 96)),
}


@pytest.fixture(scope='module')
def steps():
    """Launches of three training steps of a one-block-per-stage Micro, by step."""
    launches = {}
    with TrainingStepRecorder() as recorder:
        for name, case in STEPS.items():
            first = len(recorder.launches)
            recorder.record(case)
            launches[name] = recorder.launches[first:]
    assert all('run' not in vars(kernel) for kernel in launchable_kernels().values())
    return launches


def test_training_step_records_every_kernel_of_every_block(steps):
    launches = steps['tf32']
    names = [launch.spec.kernel for launch in launches]
    # One block per stage, four stages: one forward and two backward launches each.
    assert sorted(names) == sorted(['_attention_fwd', '_attention_bwd_query',
                                    '_attention_bwd_keys'] * 4)
    forward = [launch for launch in launches if launch.spec.kernel == '_attention_fwd']
    assert [launch.spec.constants['WINDOW'] for launch in forward] == [3, 3, 3, 0]
    assert all(launch.spec.constants['PRECISION'] == 'tf32' for launch in launches)
    # the grid of stage 1: query tiles of 32 over a 16x24 map, batch 2 x 2 heads
    assert forward[0].grid == (12 * 4,)  # one axis: tiles x (batch x heads)
    assert forward[0].context == 'micro tf32 interpolation@800 64x96 b2'
    assert all(launch.spec.num_warps == 8 for launch in launches)


def test_training_steps_record_the_precision_and_bias_mode(steps):
    spec = steps['extrapolation'][0].spec
    assert dict(spec.signature)['Q'] == '*fp32' and spec.constants['PRECISION'] == 'ieee'
    # extrapolation: one column tap without weights (rows are folded into the grid); the tap
    # count and whether the taps have weights are arguments, not specialised (interpolation
    # mode has weights at some sizes only)
    assert not {'taps', 'transposed', 'weighted', 'HAS_WW'} & set(spec.constants)
    assert 'HAS_WH' not in spec.constants and 'taps_h' not in spec.constants


def test_explicit_16_bit_inputs_reach_the_kernels_as_16_bit_pointers():
    from mmtransnext.ops.triton_attention import triton_attention
    with LaunchRecorder() as recorder, fake_cuda():
        from triton_launches import OpenCustomOps
        with OpenCustomOps():
            q, k, v = (torch.empty(2, 2, 16, 24, dtype=torch.bfloat16, device='cuda')
                       for _ in range(3))
            rows = torch.zeros(4, 4, 1, dtype=torch.long, device='cuda')
            folded = torch.empty(2, 4, 4, 3, device='cuda')
            triton_attention(q, k, v, folded, rows, None, (4, 4), (4, 4))
    (launch,) = recorder.launches
    assert launch.spec.kernel == '_attention_fwd'
    assert dict(launch.spec.signature)['Q'] == '*bf16'
    assert dict(launch.spec.signature)['OUT'] == '*fp32'  # kept for the backward's delta
    assert dict(launch.spec.signature)['LSE'] == '*fp32'
    assert launch.spec.constants['WINDOW'] == 0 and launch.spec.constants['PRECISION'] == 'tf32'


def test_input_sizes_do_not_split_the_specialisations():
    from triton_launches import size_variants, varying_arguments
    with TrainingStepRecorder() as recorder:
        for size in ((64, 64), (64, 80), (80, 112)):
            recorder.record(TrainingCase('micro', 'fp32', True, size))
    specs = list(recorder.specializations())
    counts = size_variants(specs)
    assert set(counts) == {(kernel, 'fp32') for kernel in KERNELS}
    forward = [s for s in specs if s.kernel == '_attention_fwd']
    # One variant per window (3 and 0): sizes, tap counts and the strides that follow the size
    # are left unspecialised (do_not_specialize), so widths divisible by 16 or not compile once.
    assert counts['_attention_fwd', 'fp32'] == len(forward) == 2
    for window in (3, 0):
        same_window = [s for s in forward if s.constants['WINDOW'] == window]
        assert not varying_arguments(same_window, ('HEAD_DIM', 'BLOCK_D', 'BLOCK_M', 'BLOCK_N',
                                                   'WINDOW', 'PRECISION', 'ALIGN'))


def test_stages_and_sizes_of_tiny_under_autocast_compile_one_variant_per_window():
    """TransNeXt-Tiny's 72-channel rows (stage 1) and 144/288/576-channel rows (stages 2-4) at
    two input sizes under fp16 autocast, as in the DINO schedule, with column taps with weights
    (interpolation mode) and without (extrapolation; in interpolation mode, sizes whose width
    matches the table's): one specialisation per kernel and window (strides and the taps'
    kind unspecialised, 16-byte row alignment passed as ALIGN=8 instead)."""
    from triton_launches import size_variants
    with TrainingStepRecorder() as recorder:
        for size in ((96, 64), (64, 80)):
            recorder.record(TrainingCase('tiny', 'fp16', False, size))
        recorder.record(TrainingCase('tiny', 'fp16', True, (64, 64)))
    specs = list(recorder.specializations())
    assert size_variants(specs) == {(kernel, 'fp16'): 2 for kernel in KERNELS}
    assert {s.constants['ALIGN'] for s in specs} == {8}
    assert {s.constants['WINDOW'] for s in specs} == {3, 0}


def test_dino_sizes_follow_the_pipeline(tool):
    pipeline = [dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=[(480, 1333), (800, 1333)], keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 4200)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600)),
         dict(type='RandomChoiceResize', scales=[(800, 1333)], keep_ratio=True)]])]
    sizes = tool._apply(pipeline, {(480, 640)})
    # branch 1: 480x640 as it is and scaled to short side 800; branch 2: 400x533, cropped to
    # 384..400 x 384..533, each resized to short side 800
    assert sizes == {(480, 640), (800, 1067), (800, 800), (800, 1110), (833, 800),
                     (800, 1066)}


def test_dino_config_schedule(tool):
    sizes, backbone, precision = tool.dino_schedule(tool.DINO_CONFIG)
    assert backbone.arch == 'tiny' and backbone.img_size == 800
    assert precision == 'fp16'  # AmpOptimWrapper without a dtype
    assert (800, 1067) in sizes and (480, 640) in sizes
    assert all(min(s) <= 800 and max(s) <= 1333 for s in sizes)
    assert len(sizes) > 22  # both orientations, every scale


COMPILE_SCRIPT = '''
import json, sys
import triton
import triton.language as tl
import torch
sys.path.insert(0, {tools!r})
import check_triton_build as tool
from triton_launches import specialize


@triton.jit
def add_ordered(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.atomic_add(Y + offs % 7, tl.load(X + offs, mask=offs < n), mask=offs < n)


@triton.jit
def add_relaxed(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.atomic_add(Y + offs % 7, tl.load(X + offs, mask=offs < n), mask=offs < n, sem='relaxed')


@triton.jit
def matmul(A, B, C, K, PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    for k in range(0, K, BLOCK):
        a = tl.load(A + r[:, None] * K + k + r[None, :])
        b = tl.load(B + (k + r[:, None]) * BLOCK + r[None, :])
        acc += tl.dot(a, b, input_precision=PRECISION)
    tl.store(C + r[:, None] * BLOCK + r[None, :], acc)


f32, b16 = torch.empty(1024, device='meta'), torch.empty(1024, dtype=torch.bfloat16, device='meta')
cases = {{
    'ordered': specialize(add_ordered, (f32, f32, 1000), dict(BLOCK=128)),
    'relaxed': specialize(add_relaxed, (f32, f32, 1000), dict(BLOCK=128)),
    'bf16': specialize(matmul, (b16, b16, f32, 256), dict(PRECISION='tf32', BLOCK=64,
                                                         num_stages=3)),
    'ieee': specialize(matmul, (f32, f32, f32, 256), dict(PRECISION='ieee', BLOCK=32)),
}}
out = {{}}
for name, spec in cases.items():
    for arch in (80, 90):
        stats = tool.compile_specialization(spec, arch, module='__main__')
        sixteen_bit = name in ('bf16', 'ieee')  # judged as if a 16-bit step launched them
        out[f'{{name}} {{arch}}'] = dict(stats.__dict__,
                                       problems=tool.problems(stats, sixteen_bit))
print(json.dumps(out))
'''


@pytest.mark.cuda_build
def test_compiled_binaries_are_read_and_judged(tmp_path):
    """Synthetic kernels compiled for sm_80 and sm_90 (~20 s): an atomic add with Triton's
    default acq_rel semantics is fenced (SASS MEMBAR) and fails; a relaxed one is a plain
    reduction and passes; a bf16 tl.dot has MMA instructions (and its pipelined loads
    cp.async copies); a float32 'ieee' one has none, which a 16-bit step fails on."""
    script = tmp_path / 'compile_synthetic.py'
    script.write_text(COMPILE_SCRIPT.format(tools=os.path.join(ROOT, 'tools')))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
               TRITON_CACHE_DIR=str(tmp_path / 'cache'))
    env.pop('TRITON_INTERPRET', None)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    for arch in (80, 90):
        ordered, relaxed = stats[f'ordered {arch}'], stats[f'relaxed {arch}']
        bf16, ieee = stats[f'bf16 {arch}'], stats[f'ieee {arch}']
        assert ordered['atomics'] >= 1 and ordered['ordered_atomics'] >= 1
        assert ordered['fences'] >= 1  # MEMBAR before the atomic
        assert any(p.startswith('fenced atomics') for p in ordered['problems'])
        assert relaxed['atomics'] >= 1 and relaxed['fences'] == 0
        assert relaxed['ordered_atomics'] == 0 and relaxed['problems'] == []
        assert bf16['mma_ptx'] > 0 and bf16['mma_sass'] > 0 and bf16['problems'] == []
        assert ieee['mma_ptx'] == ieee['mma_sass'] == 0
        assert ieee['problems'] == ['launched by a 16-bit autocast step but has no MMA '
                                    'instruction']
        assert all(s['registers'] > 0 and s['spill_bytes'] == 0 for s in stats.values())
    assert stats['bf16 80']['cp_async'] > 0


def _crash_on_three(job):
    if job == 3:
        faulthandler.disable()  # pytest's traceback dump of the child: noise here
        os.kill(os.getpid(), signal.SIGSEGV)  # as triton 3.0's compiler does on some kernels
    return job * 2, None


def test_a_crashing_compiler_fails_only_its_own_jobs(tool, monkeypatch):
    """Compiles run in child processes: a segfault fails the job it hit, the other jobs
    (pending or running beside it in the broken pool) are compiled all the same."""
    monkeypatch.setitem(sys.modules, tool.__name__, tool)  # the children find it by name
    monkeypatch.setattr(tool, '_compile_job', _crash_on_three)
    assert tool.compile_results(list(range(6)), 2) == \
        [(0, None), (2, None), (4, None), (None, tool.DIED), (8, None), (10, None)]


#: The triton releases besides the installed one that the kernels must build with, each
#: compiled by ``tools/check_triton_build.py --triton`` (installed alone once, a few hundred
#: MB each, into ``~/.cache/mmtransnext/triton``): the floor the dispatcher lets compile
#: (``TRITON_FLOOR``, torch 2.7's) up to the last one before the installed release (torch
#: 2.14's 3.8), the GPU machine's 3.6.0 among them. The installed release is compiled by
#: ``tests/test_ops/test_builds.py``.
RELEASES = ('3.3.1', '3.4.0', '3.5.1', '3.6.0', '3.7.1')


@pytest.mark.slow
@pytest.mark.cuda_build
def test_kernels_build_without_spills_on_every_supported_triton_release():
    """Every specialisation a training step launches, recorded once and compiled for sm_80 and
    sm_90 by each release of :data:`RELEASES` in a child process that imports it first: all
    compile, none spills (the tool's judgement, as for the installed release). A release that
    cannot be downloaded fails here, naming it."""
    from mmtransnext.ops.triton_configs import TRITON_FLOOR
    assert RELEASES[0].startswith('.'.join(map(str, TRITON_FLOOR)) + '.'), \
        'the floor the dispatcher allows must be compiled here'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    env.pop('TRITON_INTERPRET', None)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'check_triton_build.py'),
                             '--triton', *RELEASES], env=env, capture_output=True, text=True,
                            timeout=3600)
    output = result.stdout + result.stderr
    assert 'could not install triton' not in output, output[-2000:]
    for version in RELEASES:
        assert f'triton {version} (' in result.stdout, (version, output[-4000:])
    compiled = re.findall(r'(\d+) of (\d+) specialisations compiled', result.stdout)
    assert len(compiled) == len(RELEASES), output[-4000:]
    assert all(done == total and int(total) > 0 for done, total in compiled), output[-4000:]
    failed = '\n'.join(line for line in result.stdout.splitlines() if line.startswith('FAILED'))
    assert result.returncode == 0, failed[-4000:] or output[-4000:]


@pytest.mark.slow
def test_one_block_per_stage_launches_what_the_full_depth_launches():
    """The check records one block per stage (~5x faster); the full Micro (2, 2, 15, 2 blocks)
    launches the same specialisations, only more often."""
    specs = {}
    for one_block in (True, False):
        with TrainingStepRecorder(one_block_per_stage=one_block) as recorder:
            recorder.record(TrainingCase('micro', 'tf32', False, (96, 128)))
        specs[one_block] = [launch.spec for launch in recorder.launches]
    assert (len(specs[True]), len(specs[False])) == (12, 63)
    assert set(specs[True]) == set(specs[False])


def test_every_kernel_of_a_tiny_512_step_launches_two_waves():
    """Issue 17: every launch of a TransNeXt-Tiny 512x512 batch-2 training step fills at least
    two waves of 132 multiprocessors. Stage 4 (full attention, 16x16 queries of 24 heads)
    launched 192 programs with query tiles of 64 (1.45 waves); tiles of 32 give 384."""
    with TrainingStepRecorder() as recorder:
        recorder.record(TrainingCase('tiny', 'bf16', False, (512, 512)))
    assert len(recorder.launches) == 12
    waves = {(launch.spec.kernel, launch.spec.constants['WINDOW']): launch.waves()
             for launch in recorder.launches if launch.waves() < 2}
    assert waves == {}
    full = [launch for launch in recorder.launches if launch.spec.constants['WINDOW'] == 0]
    # the query backward: tiles of 16 queries of both batch items, as many programs
    assert [launch.spec.constants['BLOCK_M'] for launch in full] == [32, 16, 32]
    assert sorted(launch.programs for launch in full) == [384, 384, 384]


def test_launches_count_the_grid_gradient_atomics(steps):
    """One float atomic add per tap of the unfolded axis of every (query, pooled key) pair of
    every batch x head slice, by the query backward only; launches keep their integer
    arguments."""
    from triton_launches import grid_gradient_atomics
    by_kernel = {}
    for launch in steps['tf32']:
        by_kernel.setdefault(launch.spec.kernel, []).append(launch)
    assert all(grid_gradient_atomics(launch) == 0
               for launch in by_kernel['_attention_fwd'] + by_kernel['_attention_bwd_keys'])
    stage1 = by_kernel['_attention_bwd_query'][-1]  # backward runs the stages in reverse
    args = dict(stage1.integers)
    # Micro stage 1 at 64x96: a 16x24 map, 2 heads, pooled keys 25x25 / 8 -> 2x3 (img_size 800
    # tables resized: 4 column taps), batch 2.
    assert (args['height'], args['width'], args['heads']) == (16, 24, 2)
    # query tiles of 16 of both batch items (one pair): one atomic add per pair of items
    assert args['taps'] in (1, 2, 4) and args['BLOCK_M'] == 16 and args['batch'] == 2
    assert grid_gradient_atomics(stage1) == \
        1 * 2 * 16 * 24 * args['num_keys'] * args['taps']
    assert stage1.programs == 1 * 2 * -(-16 * 24 // 16)


def test_launches_fold_the_axis_with_more_taps(steps):
    """A 160x96 Micro step (stage 1: 40x24 queries, 5x3 pooled keys; one row tap, four column
    taps): every launch reading the bias has the columns folded and one tap per pooled logit,
    one atomic add per pair; the 64x96 step (four taps on either axis) keeps the rows folded."""
    from triton_launches import bias_taps, grid_gradient_atomics
    launches = steps['columns']
    assert all(bias_taps(launch) == (1, 'columns') for launch in launches)
    stage1 = [launch for launch in launches if launch.spec.kernel == '_attention_bwd_query'][-1]
    args = dict(stage1.integers)
    assert (args['height'], args['width'], args['num_keys']) == (40, 24, 15)
    assert grid_gradient_atomics(stage1) == 1 * 2 * 40 * 24 * 15  # one pair of items
    assert {bias_taps(launch)[1] for launch in steps['tf32']} == {'rows'}
    # which axis is folded is a runtime argument: the binaries of the float32 rows-folded step
    assert {launch.spec for launch in launches} == \
        {launch.spec for launch in steps['extrapolation']}

