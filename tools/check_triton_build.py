"""Compile every Triton attention kernel ahead of time for sm_80 and sm_90, without a GPU.

    python tools/check_triton_build.py [--arch 80 90]

Every configuration the shipped configs can launch: the three kernels of
:mod:`mmtransnext.ops.triton_kernels` for each input dtype (float32, float16, bfloat16) with its
block sizes (:data:`mmtransnext.ops.triton_attention.BLOCK_CONFIGS`), the padded head dim of every
architecture (micro, tiny, small, base), aggregated (window 3) and full attention (window 0),
and both column-tap layouts of the position bias (one tap of weight 1, as in extrapolation
mode, or weighted taps, as when the bias is resized; row taps are folded into the grid before
the kernels); float32 both with full-precision products and with TF32. Each is compiled with
``triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))`` down to a cubin (Triton's
bundled ptxas); the table gives registers per thread, spilled bytes (from ptxas' report) and
shared memory per kernel. Exits 1 if any configuration fails to compile. Must run without
``TRITON_INTERPRET`` (the interpreter has no compiler).
"""
import argparse
import contextlib
import io
import itertools
import os
import re
import shutil
import sys
import tempfile
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmtransnext.models.backbones.transnext import ARCH_SETTINGS  # noqa: E402
from mmtransnext.ops.triton_attention import BLOCK_CONFIGS, padded_dim, register_cap  # noqa: E402

TRITON_DTYPES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
#: Pointer arguments by kind: 'data' takes the input dtype, the others are fixed.
POINTERS = {
    'data': ('Q', 'K', 'V', 'TOK', 'KP', 'VP', 'OUT', 'DO', 'DQ', 'DTOK', 'DK', 'DV'),
    'fp32': ('QE', 'HS', 'QS', 'RPB', 'FOLD', 'WW', 'LSE', 'DELTA', 'DRPB', 'DFOLD', 'DKP',
             'DVP'),
    'i64': ('RW',),
}


def head_dims() -> List[int]:
    """Padded head dims of the shipped architectures."""
    dims = set()
    for arch in ARCH_SETTINGS.values():
        for dim, heads in zip(arch['embed_dims'], arch['num_heads']):
            dims.add(dim // heads)
    return sorted(dims)


def signature(kernel, dtype: str) -> Dict[str, str]:
    kinds = {name: kind for kind, names in POINTERS.items() for name in names}
    sig = {}
    for name in kernel.arg_names:
        if name in kinds:
            sig[name] = '*' + (dtype if kinds[name] == 'data' else kinds[name])
        else:
            sig[name] = 'i32'
    for param in kernel.params:
        if param.is_constexpr:
            sig[param.name] = 'constexpr'
    return sig


def configurations() -> List[Tuple[str, object, str, Dict[str, object], int]]:
    """(label, kernel, dtype, constexprs, num_warps) of every configuration to compile."""
    from mmtransnext.ops import triton_kernels as kernels
    configs = []
    for (dtype, (block_m, block_n, warps)), dim in itertools.product(BLOCK_CONFIGS.items(),
                                                                     head_dims()):
        name = TRITON_DTYPES[dtype]
        precisions = ('ieee', 'tf32') if dtype == torch.float32 else ('tf32',)
        for precision, has_ww in itertools.product(precisions, (False, True)):
            # Row taps are folded into the grid before the kernels: column weights or none.
            base = dict(HEAD_DIM=dim, BLOCK_D=padded_dim(dim), BLOCK_M=block_m, BLOCK_N=block_n,
                        HAS_WW=has_ww, PRECISION=precision)
            mode = 'columns resized' if has_ww else 'gather'
            tag = f'{name} d={dim} {block_m}x{block_n} {mode} {precision}'
            for window in (3, 0):
                for kernel in (kernels._attention_fwd, kernels._attention_bwd_query,
                               kernels._attention_bwd_keys):
                    configs.append((f'{tag} window={window}', kernel, name,
                                    dict(base, WINDOW=window), warps))
    return configs


def compile_one(kernel, dtype: str, constexprs: Dict[str, object], warps: int, arch: int):
    """Compile to a cubin; returns (registers, spill bytes, shared bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    src = ASTSource(fn=kernel, signature=signature(kernel, dtype), constexprs=constexprs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=GPUTarget('cuda', arch, 32),
                                  options=dict(num_warps=warps,
                                               **register_cap(constexprs['PRECISION'])))
    text = log.getvalue()
    regs = re.search(r'Used (\d+) registers', text)
    spills = [int(n) for n in re.findall(r'(\d+) bytes spill (?:stores|loads)', text)]
    return (int(regs.group(1)) if regs else -1, sum(spills), compiled.metadata.shared)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90])
    args = parser.parse_args()
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        print('unset TRITON_INTERPRET: the interpreter compiles nothing', file=sys.stderr)
        return 2
    # A fresh cache, so that every kernel is compiled and ptxas reports on it.
    os.environ['TRITON_CACHE_DIR'] = tempfile.mkdtemp(prefix='triton-check-')
    import triton
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas' -v report: registers and spills
    failures = 0
    print(f'{"kernel":22s} {"sm":>3s} {"configuration":44s} {"regs":>5s} {"spill B":>8s} '
          f'{"smem B":>7s}')
    for arch in args.arch:
        for label, kernel, dtype, constexprs, warps in configurations():
            name = kernel.__name__
            try:
                regs, spills, shared = compile_one(kernel, dtype, constexprs, warps, arch)
            except Exception as error:  # report every failing configuration, then fail
                failures += 1
                print(f'{name:22s} {arch:3d} {label:44s} FAILED: {error}'.splitlines()[0])
                continue
            print(f'{name:22s} {arch:3d} {label:44s} {regs:5d} {spills:8d} {shared:7d}')
    total = len(args.arch) * len(configurations())
    print(f'{total - failures} of {total} configurations compiled')
    shutil.rmtree(os.environ['TRITON_CACHE_DIR'], ignore_errors=True)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
