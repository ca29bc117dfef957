"""Time per image of an exported backbone in onnxruntime (CPU provider) against PyTorch eager.

    python tools/analysis/benchmark_export.py                       # Tiny, 512x512 and 800x1216
    python tools/analysis/benchmark_export.py --family transxnet --sizes 512x512 --repeat 5

For each registered family's backbone (random weights, eval mode, the family's default
implementation, built as for 512x512 inputs) and each size: the ONNX export (once with free
height and width, at the first size, where the family allows it; else, or with ``--fixed``,
once per size), then ``--repeat`` timed runs of each after one warm-up run, the median
printed, with the largest relative difference of the outputs and the peak memory of each
engine: how far the process's peak resident memory rose above what it held before (for
onnxruntime from the session's creation, with its default graph optimisations, constant
folding included, to its last run; for eager over its runs). Linux only (``/proc``). It
prints; it asserts nothing.
"""
import argparse
import os.path as osp
import re
import statistics
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import torch

from mmtransnext.cli import ToolError, image_size, positive_int, run_main



def _families() -> Tuple[str, ...]:
    from mmtransnext.models.backbones import families
    return tuple(name.lower() for name in families())


#: Every registered backbone family, by lower-case class name.
FAMILIES = _families()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--family', choices=FAMILIES + ('both',), default='both',
                        help="one family, or 'both' (every registered family)")
    parser.add_argument('--arch', default='tiny', help='arch of both families (default tiny)')
    parser.add_argument('--sizes', type=image_size, nargs='+',
                        default=[(512, 512), (800, 1216)], metavar='HxW')
    parser.add_argument('--repeat', type=positive_int, default=3,
                        help='timed runs per case (median printed)')
    parser.add_argument('--fixed', action='store_true',
                        help='export once per size even where height and width can be free')
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='threads of both runtimes (default: torch.get_num_threads())')
    parser.add_argument('--mode', default=None,
                        help="the backbone's size mode (TransNeXt: 'interpolation' or "
                        "'extrapolation'; default: the family's first)")
    return parser.parse_args(argv)


def median_time(run: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _memory_kb(field: str) -> int:
    with open('/proc/self/status') as status:
        return int(re.search(rf'{field}:\s+(\d+)', status.read()).group(1))


def peak_memory(run: Callable[[], object]) -> Tuple[object, float]:
    """``run()``'s result and how far the process's peak resident memory rose above its
    resident memory before the call, in GB (the peak is reset first, Linux
    ``/proc/self/clear_refs``)."""
    with open('/proc/self/clear_refs', 'w') as refs:
        refs.write('5')
    before = _memory_kb('VmRSS')
    result = run()
    return result, (_memory_kb('VmHWM') - before) / (1 << 20)


def build_backbone(family: str, arch: str, mode: Optional[str] = None) -> torch.nn.Module:
    """``family``'s ``arch`` as its recipes build it for 512x512 inputs in size ``mode``
    (default the family's first), in eval mode."""
    from mmtransnext.models.backbones import families
    backbone = {name.lower(): cls for name, cls in families().items()}[family]
    mode = backbone.size_modes[0] if mode is None else mode
    if mode not in backbone.size_modes:
        raise ToolError(f'{family} has the size modes {backbone.size_modes}, not {mode!r}')
    return backbone.for_input_size(arch, (512, 512), mode,
                                   **backbone.implementations[backbone.default_implementation]
                                   ).eval()


def exports_dynamic(model: torch.nn.Module) -> bool:
    """Whether ``model`` exports with free height and width."""
    from mmtransnext import deployment
    try:
        deployment.check_exportable(model, dynamic=True)
    except deployment.ExportError:
        return False
    return True


def benchmark(family: str, arch: str, sizes: List[Tuple[int, int]], repeat: int,
              threads: int, folder: str, fixed: bool = False,
              mode: Optional[str] = None) -> None:
    from mmtransnext import deployment
    model = build_backbone(family, arch, mode)
    dynamic = not fixed and exports_dynamic(model)
    path = None
    export_s = 0.
    for height, width in sizes:
        if path is None or not dynamic:
            path = osp.join(folder, f'{family}_{height}x{width}.onnx')
            start = time.perf_counter()
            deployment.export(model, path, (height, width), part='backbone', dynamic=dynamic)
            export_s = time.perf_counter() - start
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            expected = model(x)
            eager, eager_gb = peak_memory(lambda: median_time(lambda: model(x), repeat))

        def run_session():
            session = deployment.onnx_session(path, threads, fold_constants=True)
            return deployment.run_onnx(session, x), median_time(
                lambda: deployment.run_onnx(session, x), repeat)

        (actual, ort), ort_gb = peak_memory(run_session)
        error = max(deployment.relative_error(a, e) for a, e in zip(actual, expected))
        print(f'{family}-{arch:<6} {mode or "":<13} {height:>4}x{width:<5} '
              f'{"dynamic" if dynamic else "fixed":<8}'
              f'eager {eager:7.3f} s {eager_gb:5.2f} GB  onnxruntime {ort:7.3f} s '
              f'{ort_gb:5.2f} GB  (x{eager / ort:4.2f})  max rel err {error:.1e}  '
              f'export {export_s:5.0f} s', flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    families = FAMILIES if args.family == 'both' else (args.family,)
    print(f'CPU, {threads} threads, torch {torch.__version__}, batch 1, median of '
          f'{args.repeat} runs after one warm-up', flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for family in families:
            benchmark(family, args.arch, args.sizes, args.repeat, threads, folder, args.fixed,
                      args.mode)


if __name__ == '__main__':
    run_main(main)
