"""Compile, without a GPU, every Triton kernel specialisation a TransNeXt training step launches,
for sm_80 and sm_90, and read what the hardware would run.

    python tools/check_triton_build.py [--arch 80 90] [--archs micro tiny small base]
        [--precisions fp32 tf32 bf16 fp16] [--sizes 512x512 800x1216 800x1067]
        [--dino CONFIG | --no-dino] [--max-variants N] [--jobs N] [--verbose]

1. Records the launches of real training steps (forward and backward, ``attn_impl='triton'``)
   of every architecture, precision (float32 with and without TF32, bfloat16 and float16 under
   CUDA autocast), position-bias mode (interpolation from ``img_size=800``, extrapolation) and
   input size at batch 2, on fake CUDA tensors, kernels not run; each launch's specialisation is
   computed by Triton's own runtime code (see ``tools/triton_launches.py``, this script's
   sibling module).
2. Compiles each distinct specialisation once per arch with ``triton.compile(ASTSource(...),
   target=GPUTarget('cuda', arch, 32))`` down to a cubin (Triton's bundled ptxas) and prints
   registers per thread and spilled bytes (ptxas' report), shared memory, MMA instructions
   (SASS ``HMMA``/``HGMMA``; PTX ``mma``/``wgmma`` counted too), device-scope memory fences
   (SASS ``MEMBAR.*.GPU``, PTX ``membar.gl``/``fence.sc``/``fence.acq_rel``; not the CTA-scope
   ``MEMBAR.ALL.CTA`` that sm_90's async-proxy fence before ``wgmma`` becomes) plus atomics
   with acquire/release semantics (column ``fence``), ``cp.async`` copies and atomics (PTX
   ``atom``/``red``).
3. Exits 1, naming the specialisation and the reason, on a compile error, a spill, a fenced
   atomic (a device-scope fence or acquire/release semantics in a kernel with atomics: Triton's
   default ``sem='acq_rel'`` puts a ``MEMBAR.ALL.GPU`` before every one), or a kernel without
   MMA instructions launched by a 16-bit (autocast) step.
4. Counts the distinct specialisations per kernel and input dtype over the sizes the DINO
   multi-scale schedule of ``--dino`` trains at (its architecture, position-bias mode and AMP
   dtype; every branch and scale of its ``RandomChoice``/``RandomChoiceResize``/``RandomCrop``
   pipeline applied to common COCO image shapes) at batch 2: each is one more kernel to
   compile while training. ``--max-variants N`` fails above N per kernel and dtype.

Must run without ``TRITON_INTERPRET`` (the interpreter has no compiler).
"""
import argparse
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from mmtransnext.cli import ToolError, check_file, image_size, positive_int, run_main  # noqa: E402

from triton_launches import (DEFAULT_SIZES, PRECISIONS, KernelSpecialization,
                             TrainingCase, TrainingStepRecorder, launchable_kernels,
                             size_variants, varying_arguments)

ARCHS = ('micro', 'tiny', 'small', 'base')
KERNEL_MODULE = 'mmtransnext.ops.triton_kernels'
DINO_CONFIG = os.path.join(ROOT, 'configs', 'dino', 'dino-5scale_transnext-tiny_8xb2-12e_coco.py')
#: COCO image shapes ``(h, w)`` the DINO schedule's sizes are derived from: 4:3 and 3:2, both
#: orientations (most of COCO's images are 640 pixels on their long side).
COCO_SHAPES = ((480, 640), (640, 480), (427, 640), (640, 427))
SIXTEEN_BIT = ('bf16', 'fp16')


# ------------------------------------------------------------------------ reading the binary
@dataclass(frozen=True)
class BuildStats:
    """What one compiled kernel holds (-1: not reported)."""
    registers: int
    spill_bytes: int
    shared_bytes: int
    mma_sass: int
    mma_ptx: int
    fences: int  # device-scope: SASS MEMBAR.*.GPU/SYS + PTX membar / fence.sc / fence.acq_rel
    ordered_atomics: int  # PTX atom/red with .acquire, .release or .acq_rel semantics
    cp_async: int
    atomics: int

    @property
    def mma(self) -> int:
        return self.mma_sass if self.mma_sass >= 0 else self.mma_ptx


_PTX_OPCODE = re.compile(r'^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)', re.M)
_SASS_OPCODE = re.compile(r'^\s*(?:[-\w]+:[-\w]+:[-\w]+:[-\w]+:[\w]+\s+)?(?:@!?U?P\w+\s+)?'
                          r'([A-Z][A-Z0-9_.]*)', re.M)


def ptx_opcodes(ptx: str) -> List[str]:
    """Opcodes of the PTX instructions (predicates stripped; directives and labels left out)."""
    return [op for op in _PTX_OPCODE.findall(ptx) if not op.endswith(':')]


def sass_opcodes(sass: str) -> List[str]:
    """Opcodes of the SASS instructions as Triton prints them (``compiled.asm['sass']``)."""
    return _SASS_OPCODE.findall(sass)


def instruction_counts(ptx: str, sass: Optional[str]) -> Dict[str, int]:
    """MMA, fence, ordered-atomic, ``cp.async`` and atomic counts of a kernel's PTX and SASS."""
    ops = ptx_opcodes(ptx)
    atomics = [op for op in ops if op.startswith(('atom.', 'red.'))]
    counts = dict(
        mma_ptx=sum(op.startswith(('mma.', 'wgmma.mma_async')) for op in ops),
        fences=sum(bool(re.match(r'membar\.(gl|sys)\b|fence\.(sc|acq_rel)\.(gpu|sys)\b', op))
                   for op in ops),
        ordered_atomics=sum(bool(re.search(r'\.(acquire|release|acq_rel)\b', op))
                            for op in atomics),
        cp_async=sum(op.startswith('cp.async') and not re.search(
            r'commit_group|wait_group|wait_all|mbarrier', op) for op in ops),
        atomics=len(atomics), mma_sass=-1)
    if sass is not None:
        sops = sass_opcodes(sass)
        counts['mma_sass'] = sum(op.startswith(('HMMA.', 'HGMMA.')) for op in sops)
        counts['fences'] += sum(bool(re.match(r'MEMBAR\.(\w+\.)?(GPU|SYS)\b', op))
                                for op in sops)
    return counts


def _sass(compiled) -> Optional[str]:
    """The cubin's SASS (cuobjdump/nvdisasm bundled with Triton), None if they cannot run;
    their warnings on stderr are dropped."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            return compiled.asm['sass']
        except Exception:  # noqa: BLE001 - SASS is optional, PTX is still read
            return None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def triton_version() -> Tuple[int, int]:
    """``(major, minor)`` of the triton this process imports."""
    import triton
    return tuple(int(part) for part in triton.__version__.split('.')[:2])


def ast_source(kernel, spec: KernelSpecialization):
    """``spec`` as the ``ASTSource`` of the triton this process imports. ``spec`` is in the
    form triton >= 3.3 uses (signature by name with constexprs in it, constexprs and
    attributes by argument path); triton 3.0-3.2 take the non-constexpr signature, constants
    by name, and an ``AttrsDescriptor`` of argument indices (as their ``JITFunction.run``
    builds them), ints made constexpr because equal to 1 staying in their signature."""
    from triton.compiler import ASTSource
    signature, constexprs, attrs, _ = spec.compile_args()
    if triton_version() >= (3, 3):
        return ASTSource(kernel, signature, constexprs, attrs)
    declared = {p.name for p in kernel.params if p.is_constexpr}
    names = list(signature)
    ones = [path[0] for path, value in constexprs.items()
            if names[path[0]] not in declared and value == 1]
    divisible = [path[0] for path, values in attrs.items() if ['tt.divisibility', 16] in values]
    old_signature = {name: ('i32' if i in ones else ty) for i, (name, ty) in
                     enumerate(signature.items()) if ty != 'constexpr' or i in ones}
    constants = {names[path[0]]: value for path, value in constexprs.items()}
    if triton_version() >= (3, 2):
        from triton.backends.compiler import AttrsDescriptor
        descriptor = AttrsDescriptor.from_dict({'cls': 'AttrsDescriptor', 'arg_properties': {
            'tt.divisibility': divisible, 'tt.equal_to': ones}})
    else:
        from triton.compiler import AttrsDescriptor
        descriptor = AttrsDescriptor(tuple(divisible), tuple(ones))
    return ASTSource(kernel, old_signature, constants, descriptor)


def _ptxas_report(compiled, arch: int) -> str:
    """ptxas' ``-v`` report (registers, spills) of ``compiled``'s PTX, by the ptxas bundled with
    the triton this process imports, with the flags Triton compiles it with: for releases
    without ``knobs.nvidia.dump_ptxas_log`` (before 3.5), which keep the report to themselves."""
    import subprocess

    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, 'kernel.ptx')
        with open(source, 'w') as f:
            f.write(compiled.asm['ptx'])
        result = subprocess.run([ptxas, '-lineinfo', '-v', f'--gpu-name=sm_{arch}'
                                 + ('a' if arch >= 90 else ''), source, '-o',
                                 os.path.join(folder, 'kernel.cubin')],
                                capture_output=True, text=True)
    return result.stdout + result.stderr


def compile_specialization(spec: KernelSpecialization, arch: int,
                           module: str = KERNEL_MODULE) -> BuildStats:
    """Compile ``spec`` (of a kernel of ``module``) for ``sm_<arch>`` down to a cubin, with the
    triton this process imports (3.0 or later)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    from triton_launches import _as_jit_function
    kernel = _as_jit_function(launchable_kernels(importlib.import_module(module))[spec.kernel])
    options = spec.compile_args()[3]
    logged = hasattr(getattr(getattr(triton, 'knobs', None), 'nvidia', None), 'dump_ptxas_log')
    if logged:
        triton.knobs.nvidia.dump_ptxas_log = True  # ptxas' -v report: registers and spills
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ast_source(kernel, spec), target=GPUTarget('cuda', arch, 32),
                                  options=options)
    text = log.getvalue() if logged else _ptxas_report(compiled, arch)
    regs = re.search(r'Used (\d+) registers', text)
    spills = [int(n) for n in re.findall(r'(\d+) bytes spill (?:stores|loads)', text)]
    counts = instruction_counts(compiled.asm['ptx'], _sass(compiled))
    return BuildStats(registers=int(regs.group(1)) if regs else -1, spill_bytes=sum(spills),
                      shared_bytes=compiled.metadata.shared, **counts)


def problems(stats: BuildStats, sixteen_bit: bool) -> List[str]:
    """Why a compiled specialisation fails the check (empty: it passes)."""
    out = []
    if stats.spill_bytes > 0:
        out.append(f'spills {stats.spill_bytes} bytes')
    if stats.atomics and (stats.fences or stats.ordered_atomics):
        out.append(f'fenced atomics: {stats.ordered_atomics} of {stats.atomics} with '
                   f'acquire/release semantics, {stats.fences} device-scope memory fences '
                   f"(atomic_add(..., sem='relaxed') needs none)")
    if sixteen_bit and stats.mma == 0:
        out.append('launched by a 16-bit autocast step but has no MMA instruction')
    return out


# ------------------------------------------------------------------------ recording
def record(cases: Sequence[TrainingCase]) -> Tuple[TrainingStepRecorder,
                                                 Dict[str, TrainingCase]]:
    """Launches of a training step of every case, and the cases by label."""
    with TrainingStepRecorder() as recorder:
        for case in cases:
            recorder.record(case)
    return recorder, {case.label: case for case in cases}


def arch_groups(archs: Sequence[str]) -> Dict[str, List[str]]:
    """``archs`` grouped by their stage settings other than depth (which one block per stage
    leaves out: tiny and small differ only there), by the first of each group."""
    from mmtransnext.models.backbones.transnext import resolve_arch
    groups: Dict[Tuple, List[str]] = {}
    for arch in archs:
        settings = resolve_arch(arch)
        key = tuple((k, tuple(v)) for k, v in sorted(settings.items()) if k != 'depths')
        groups.setdefault(key, []).append(arch)
    return {members[0]: members for members in groups.values()}


def declared_constexprs(kernel_name: str) -> Set[str]:
    from triton_launches import _as_jit_function
    kernel = _as_jit_function(launchable_kernels()[kernel_name])
    return {p.name for p in kernel.params if p.is_constexpr}


def describe(spec: KernelSpecialization) -> str:
    """The declared constexprs, then the arguments made constexpr because equal to 1."""
    declared = declared_constexprs(spec.kernel)
    constants = spec.constants
    text = ' '.join(f'{name}={int(v) if isinstance(v, bool) else v}'
                    for name, v in constants.items() if name in declared)
    ones = [name for name, v in constants.items() if name not in declared]
    return text + (f' ={",".join(ones)}' if ones else '') + f' D:{len(spec.divisible)}'


# ------------------------------------------------------------------------ DINO schedule
def _rescale(shape: Tuple[int, int], scale: Sequence[int]) -> Tuple[int, int]:
    """``mmcv.rescale_size`` with ``keep_ratio``: the largest size within ``scale``'s long and
    short edges."""
    h, w = shape
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _crops(shape: Tuple[int, int], transform: dict) -> Set[Tuple[int, int]]:
    """mmdet ``RandomCrop`` sizes of a ``shape`` image: both ends of each axis' range."""
    h, w = shape
    low, high = transform['crop_size']
    kind = transform.get('crop_type', 'absolute')
    if kind == 'absolute_range':
        return {(ch, cw) for ch in {min(h, low), min(h, high)}
                for cw in {min(w, low), min(w, high)}}
    if kind == 'absolute':
        return {(min(h, low), min(w, high))}
    raise ValueError(f'RandomCrop crop_type {kind!r} is not modelled')


def _apply(pipeline: Sequence[dict], shapes: Set[Tuple[int, int]]) -> Set[Tuple[int, int]]:
    for transform in pipeline:
        kind = transform['type'] if isinstance(transform['type'], str) else \
            transform['type'].__name__
        if kind == 'RandomChoice':
            shapes = set().union(*(_apply(branch, shapes) for branch in transform['transforms']))
        elif kind == 'RandomChoiceResize':
            if not transform.get('keep_ratio', False):
                raise ValueError('RandomChoiceResize without keep_ratio is not modelled')
            shapes = {_rescale(s, scale) for s in shapes for scale in transform['scales']}
        elif kind == 'Resize':
            shapes = {_rescale(s, transform['scale']) for s in shapes}
        elif kind == 'RandomCrop':
            shapes = set().union(*(_crops(s, transform) for s in shapes))
    return shapes


def dino_schedule(config: str, image_shapes: Sequence[Tuple[int, int]] = COCO_SHAPES):
    """``(sizes, backbone settings, AMP precision)`` of a DINO config's multi-scale training."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    pipeline = cfg.train_dataloader.dataset.pipeline
    sizes = sorted(_apply(pipeline, set(image_shapes)))
    wrapper = cfg.optim_wrapper
    precision = 'fp32'
    if wrapper.get('type') == 'AmpOptimWrapper':
        precision = {'bfloat16': 'bf16', 'float16': 'fp16', None: 'fp16'}[wrapper.get('dtype')]
    return sizes, cfg.model.backbone, precision


def evenly(items: Sequence, count: Optional[int]) -> List:
    """``count`` items spread evenly over ``items`` (all of them if None or enough)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, count - 1))] for i in range(count)]


def dino_variants(config: str, precisions: Optional[Sequence[str]], sample: Optional[int],
                  max_variants: Optional[int], verbose: bool) -> int:
    """Print the distinct specialisations per kernel and dtype over the DINO schedule; returns
    the number of (kernel, dtype) pairs above ``max_variants``."""
    all_sizes, backbone, amp = dino_schedule(config)
    sizes = evenly(all_sizes, sample)
    precisions = precisions or [amp]
    start = time.time()
    cases = [TrainingCase(backbone.arch, precision, bool(backbone.is_extrapolation), size,
                          batch=2, img_size=backbone.img_size)
             for precision in precisions for size in sizes]
    recorder, _ = record(cases)
    specs = list(recorder.specializations())
    mode = 'extrapolation' if backbone.is_extrapolation else 'interpolation'
    print(f'\nDINO schedule of {os.path.relpath(config, ROOT)}: {len(sizes)} of its '
          f'{len(all_sizes)} sizes (COCO shapes {list(COCO_SHAPES)} through every branch and '
          f'scale), {min(sizes)} to {max(sizes)}; {backbone.arch}, {mode}, batch 2, '
          f'{"/".join(precisions)}; recorded in {time.time() - start:.0f} s')
    over = 0
    for (kernel, dtype), count in sorted(size_variants(specs).items()):
        flag = ''
        if max_variants is not None and count > max_variants:
            over += 1
            flag = f'  FAILED: more than {max_variants}'
        varying = varying_arguments([s for s in specs if (s.kernel, s.dtype) == (kernel, dtype)],
                                    declared_constexprs(kernel))
        print(f'  {kernel:22s} {dtype:5s} {count:3d} variants{flag}')
        print(f'    specialised on: {", ".join(varying) or "-"}')
    return over


# ------------------------------------------------------------------------ launch report
def launch_report(archs: Sequence[str], precisions: Sequence[str],
                  sizes: Sequence[Tuple[int, int]], multiprocessors: int = 132) -> int:
    """Print, per training step at batch 2 (every block, interpolation mode), each kernel's
    launches with their programs and waves on ``multiprocessors`` SMs, and the float atomic adds
    into the CPB grid gradient (:func:`grid_gradient_atomics`), and per launch the bias taps
    (gathers per pooled logit, and atomic adds per logit in the query backward) and which axis
    of the CPB grid is folded (:func:`bias_taps`); returns the launches with fewer than two
    waves."""
    from triton_launches import bias_taps, grid_gradient_atomics
    short = 0
    with TrainingStepRecorder(one_block_per_stage=False) as recorder:
        for arch in archs:
            for precision in precisions:
                for size in sizes:
                    first = len(recorder.launches)
                    case = TrainingCase(arch, precision, False, size)
                    recorder.record(case)
                    launches = recorder.launches[first:]
                    seen = {}
                    for launch in launches:
                        key = (launch.spec.kernel, launch.grid, launch.spec.constants['WINDOW'])
                        seen.setdefault(key, [launch, 0])[1] += 1
                    atomics = sum(map(grid_gradient_atomics, launches))
                    print(f'\n{case.label}: {len(launches)} launches, {atomics:.4g} grid-gradient '
                          f'atomic adds per step')
                    for (kernel, _, window), (launch, count) in seen.items():
                        waves = launch.waves(multiprocessors)
                        short += count * (waves < 2)
                        taps = bias_taps(launch)
                        print(f'  {kernel:21s} x{count:<3d} {launch.programs:6d} programs '
                              f'{waves:6.2f} waves  WINDOW={window} '
                              f'BLOCK_M={launch.spec.constants["BLOCK_M"]} '
                              f'warps={launch.spec.num_warps} stages={launch.spec.num_stages}'
                              + (f' taps={taps[0]} ({taps[1]} folded)' if taps else '')
                              + ('  BELOW 2 WAVES' if waves < 2 else ''))
    return short


# ------------------------------------------------------------------------ main
def _compile_job(job):
    spec, arch = job
    try:
        return compile_specialization(spec, arch), None
    except Exception as error:  # noqa: BLE001 - every failing specialisation is reported
        return None, f'{type(error).__name__}: {error}'.splitlines()[0]


#: What a job gets whose compiler killed its process (triton 3.0 segfaults on some kernels).
DIED = 'the compiler process died (a crash in Triton\'s compiler, e.g. a segfault)'


def _compile_round(indices: Sequence[int], jobs: Sequence, workers: int) -> Dict[int, Tuple]:
    """``{index: (stats, error)}`` of the jobs of ``indices`` compiled in a fresh pool of
    ``workers`` processes; those the pool could not finish because one of its processes died
    are left out."""
    from concurrent.futures.process import BrokenProcessPool
    done = {}
    with ProcessPoolExecutor(workers) as pool:
        futures = {i: pool.submit(_compile_job, jobs[i]) for i in indices}
        for i, future in futures.items():
            try:
                done[i] = future.result()
            except BrokenProcessPool:
                pass
    return done


def compile_results(jobs: Sequence, workers: int) -> List[Tuple]:
    """``(stats, error)`` of every job, compiled in child processes, so that a compiler that
    crashes fails its own jobs (:data:`DIED`) rather than this tool: a pool broken by a crash
    is made again for the jobs it left; when a round finishes none, its first job is compiled
    alone, and a crash there is that job's."""
    results: Dict[int, Tuple] = {}
    pending = list(range(len(jobs)))
    while pending:
        done = _compile_round(pending, jobs, workers)
        if not done:
            done = _compile_round(pending[:1], jobs, 1) or {pending[0]: (None, DIED)}
        results.update(done)
        pending = [i for i in pending if i not in results]
    return [results[i] for i in range(len(jobs))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90], help='sm_ targets')
    parser.add_argument('--archs', nargs='+', default=list(ARCHS), choices=ARCHS,
                        help='TransNeXt architectures')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument('--sizes', type=image_size, nargs='+', default=list(DEFAULT_SIZES),
                        help='input sizes HxW')
    parser.add_argument('--dino', nargs='?', const=DINO_CONFIG, metavar='CONFIG',
                        help='count the specialisations over the multi-scale schedule of a DINO '
                        f'config (default {os.path.relpath(DINO_CONFIG, ROOT)})')
    parser.add_argument('--dino-precisions', nargs='+', choices=PRECISIONS,
                        help="with --dino: default the config's AMP dtype")
    parser.add_argument('--dino-sample', type=positive_int, metavar='N',
                        help='with --dino: N sizes spread over the schedule instead of all')
    parser.add_argument('--max-variants', type=positive_int, metavar='N',
                        help='with --dino: fail above N specialisations per kernel and dtype')
    parser.add_argument('--no-compile', action='store_true', help='record only')
    parser.add_argument('--launch-report', action='store_true',
                        help='only print the launches of full-depth training steps of --archs x '
                        '--precisions x --sizes (interpolation, batch 2): programs, waves on 132 '
                        'SMs, CPB grid-gradient atomics; exits 1 if a launch has under 2 waves')
    parser.add_argument('--jobs', type=positive_int, default=min(2, os.cpu_count() or 1),
                        help='compiler processes')
    parser.add_argument('--verbose', action='store_true',
                        help='list the specialised arguments and the launching steps')
    parser.add_argument('--triton', metavar='VERSION', nargs='+',
                        help='compile with these triton releases instead of the installed one, '
                        'one after the other: each installed alone (pip install --no-deps '
                        f'--target) once into {TRITON_CACHE}/VERSION and imported first in a '
                        'child process; the launches are recorded once, here, with the '
                        'installed triton')
    parser.add_argument('--compile-specs', metavar='FILE', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_variants is not None and args.dino is None:
        parser.error('--max-variants needs --dino')
    if args.dino is not None:
        check_file(args.dino, '--dino config')
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        print('unset TRITON_INTERPRET: the interpreter compiles nothing', file=sys.stderr)
        return 2
    if args.launch_report:
        return int(launch_report(args.archs, args.precisions, args.sizes) > 0)
    # A fresh cache, so that every kernel is compiled and ptxas reports on it.
    os.environ['TRITON_CACHE_DIR'] = tempfile.mkdtemp(prefix='triton-check-')
    try:
        return _run(args)
    finally:
        shutil.rmtree(os.environ['TRITON_CACHE_DIR'], ignore_errors=True)


def _run(args) -> int:
    start = time.time()
    if args.compile_specs:  # the child of --triton: compile what the parent recorded
        import pickle

        import triton
        with open(args.compile_specs, 'rb') as f:
            specs, by_label = pickle.load(f)
        print(f'triton {triton.__version__} ({os.path.dirname(triton.__file__)})', flush=True)
        failures = compile_all(specs, by_label, args)
        for failure in failures:
            print(f'FAILED {failure}')
        print(f'{"FAILED" if failures else "passed"}: {len(failures)} build problems with '
              f'triton {triton.__version__}')
        return 1 if failures else 0
    groups = arch_groups(args.archs)
    cases = [TrainingCase(arch, precision, extrapolation, size)
             for arch in groups for precision in args.precisions
             for extrapolation in (False, True) for size in args.sizes]
    recorder, by_label = record(cases)
    specs = recorder.specializations()
    per_kernel = defaultdict(int)
    for spec in specs:
        per_kernel[spec.kernel] += 1
    print(f'{len(recorder.launches)} launches in {len(cases)} training steps at batch 2 '
          f'({" ".join("/".join(g) for g in groups.values())} x '
          f'{"/".join(args.precisions)} x interpolation/extrapolation x '
          f'{" ".join(f"{h}x{w}" for h, w in args.sizes)}): {len(specs)} distinct '
          f'specialisations (' + ', '.join(f'{k} {n}' for k, n in sorted(per_kernel.items()))
          + f'); recorded in {time.time() - start:.0f} s')
    never = sorted(set(launchable_kernels()) - set(per_kernel))
    if never:
        print(f'never launched (device functions): {", ".join(never)}')
    if args.triton and not args.no_compile:
        failures = [failure for version in args.triton
                    for failure in compile_with_release(version, specs, by_label, args)]
    else:
        failures = [] if args.no_compile else compile_all(specs, by_label, args)
    over = 0
    if args.dino is not None:
        over = dino_variants(args.dino, args.dino_precisions, args.dino_sample,
                             args.max_variants, args.verbose)
    for failure in failures:
        print(f'FAILED {failure}')
    if over:
        print(f'FAILED {over} kernel/dtype pairs need more than {args.max_variants} '
              f'specialisations over the DINO schedule')
    print(f'{"FAILED" if failures or over else "passed"}: {len(failures)} build problems'
          + (f', {over} kernel/dtype pairs above --max-variants' if over else '')
          + f'; {time.time() - start:.0f} s in all')
    return 1 if failures or over else 0


#: Where ``--triton`` keeps the triton releases it installs, one folder per version.
TRITON_CACHE = os.environ.get('MMTRANSNEXT_TRITON_CACHE') or os.path.join(
    os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'mmtransnext', 'triton')


def triton_release(version: str) -> str:
    """The folder holding triton ``version`` alone (no torch; a few hundred MB), installed there
    once with ``pip install --no-deps --target``; :class:`~mmtransnext.cli.ToolError` naming the
    version and the folder when pip cannot install it (e.g. no network)."""
    import subprocess
    if not re.fullmatch(r'\d+(\.\d+){1,2}', version):
        raise ToolError(f'--triton: expected a release number such as 3.6.0, '
                        f'got {version!r}')
    folder = os.path.join(TRITON_CACHE, version)
    if os.path.isfile(os.path.join(folder, 'triton', '__init__.py')):
        return folder
    os.makedirs(TRITON_CACHE, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{version}-', dir=TRITON_CACHE)
    result = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                             '--disable-pip-version-check', '--target', staging,
                             f'triton=={version}'], capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(os.path.join(staging, 'triton',
                                                                 '__init__.py')):
        shutil.rmtree(staging, ignore_errors=True)
        raise ToolError(
            f'could not install triton=={version} into {folder} (pip install --no-deps '
            f'--target, exit {result.returncode}): {result.stderr.strip()[-600:]}')
    try:
        os.rename(staging, folder)
    except OSError:  # another process installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def compile_with_release(version: str, specs: Dict[KernelSpecialization, List[str]],
                         by_label: Dict[str, TrainingCase], args) -> List[str]:
    """Compile ``specs`` in a child process that imports triton ``version``
    (:func:`triton_release`) before the installed one; its table and failures are printed
    there. Returns one failure line if it failed (the child named the reasons)."""
    import pickle
    import subprocess
    folder = triton_release(version)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'specs.pkl')
        with open(path, 'wb') as f:
            pickle.dump((specs, by_label), f)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [folder, ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
        env.pop('TRITON_INTERPRET', None)
        sys.stdout.flush()  # before the child's lines
        result = subprocess.run([sys.executable, os.path.abspath(__file__), '--compile-specs',
                                 path, '--jobs', str(args.jobs), '--arch',
                                 *map(str, args.arch)] + (['--verbose'] if args.verbose else []),
                                env=env)
    if result.returncode == 0:
        return []
    return [f'triton {version}: the build check failed (exit {result.returncode}; its '
            f'reasons above)']


def compile_all(specs: Dict[KernelSpecialization, List[str]], by_label: Dict[str, TrainingCase],
                args) -> List[str]:
    """Compile every specialisation for every arch, print the table; returns the failures."""
    ids = {spec: i for i, spec in enumerate(specs, 1)}
    jobs = [(spec, arch) for spec in specs for arch in args.arch]
    start = time.time()
    results = compile_results(jobs, args.jobs)
    print(f'{"id":>4s} {"kernel":21s} {"sm":>3s} {"dtype":5s} {"steps":14s} {"warps":>5s} '
          f'{"regs":>4s} {"spill":>5s} {"smem":>6s} {"mma":>4s} {"fence":>5s} {"cp.as":>5s} '
          f'{"atom":>4s}  configuration')
    failures, compiled = [], 0
    for (spec, arch), (stats, error) in zip(jobs, results):
        contexts = specs[spec]
        steps = sorted({by_label[c].precision for c in contexts})
        head = (f'v{ids[spec]:<3d} {spec.kernel:21s} {arch:3d} {spec.dtype:5s} '
                f'{"/".join(steps):14s} {spec.num_warps:5d}')
        if stats is None:
            failures.append(f'v{ids[spec]} {spec.kernel} sm_{arch}: compile error: {error}')
            print(f'{head} FAILED: {error}', flush=True)
            continue
        compiled += 1
        print(f'{head} {stats.registers:4d} {stats.spill_bytes:5d} {stats.shared_bytes:6d} '
              f'{stats.mma:4d} {stats.fences + stats.ordered_atomics:5d} {stats.cp_async:5d} '
              f'{stats.atomics:4d}  {describe(spec)}', flush=True)
        sixteen = any(by_label[c].precision in SIXTEEN_BIT for c in contexts)
        for reason in problems(stats, sixteen):
            failures.append(f'v{ids[spec]} {spec.kernel} {spec.dtype} sm_{arch} '
                            f'({describe(spec)}; launched by {contexts[0]}): {reason}')
    if args.verbose:
        for spec, i in ids.items():
            special = spec.value_specialised(declared_constexprs(spec.kernel))
            print(f'v{i}: {", ".join(f"{k}={v}" for k, v in special.items())}\n'
                  f'    launched by {"; ".join(specs[spec])}')
    print(f'{compiled} of {len(jobs)} specialisations compiled '
          f'(sm_{", sm_".join(map(str, args.arch))}) in {time.time() - start:.0f} s')
    return failures


if __name__ == '__main__':
    sys.exit(run_main(main))
