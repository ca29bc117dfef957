"""Time per image of an exported backbone in onnxruntime (CPU provider) against PyTorch eager.

    python tools/analysis/benchmark_export.py                       # Tiny, 512x512 and 800x1216
    python tools/analysis/benchmark_export.py --family transxnet --sizes 512x512 --repeat 5

For each registered family's backbone (random weights, eval mode, the family's default
implementation, built as for 512x512 inputs) and each size: the ONNX export (once with free
height and width where the family allows it, as TransXNet; else once per size, as TransNeXt,
whose position tables are baked), then ``--repeat`` timed runs of each after one
warm-up run, the median printed, with the largest relative difference of the outputs. It
prints; it asserts nothing.
"""
import argparse
import os.path as osp
import statistics
import tempfile
import time
from typing import Callable, List, Tuple

import torch

from mmtransnext.cli import image_size, positive_int, run_main



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
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='threads of both runtimes (default: torch.get_num_threads())')
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


def build_backbone(family: str, arch: str) -> torch.nn.Module:
    """``family``'s ``arch`` as its recipes build it for 512x512 inputs, in eval mode."""
    from mmtransnext.models.backbones import families
    backbone = {name.lower(): cls for name, cls in families().items()}[family]
    return backbone.for_input_size(arch, (512, 512), backbone.size_modes[0],
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
              threads: int, folder: str) -> None:
    from mmtransnext import deployment
    model = build_backbone(family, arch)
    dynamic = exports_dynamic(model)
    path = None
    export_s = 0.
    for height, width in sizes:
        if path is None or not dynamic:
            path = osp.join(folder, f'{family}_{height}x{width}.onnx')
            start = time.perf_counter()
            deployment.export(model, path, (height, width), part='backbone', dynamic=dynamic)
            export_s = time.perf_counter() - start
        session = deployment.onnx_session(path, threads)
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            expected = model(x)
            eager = median_time(lambda: model(x), repeat)
        actual = deployment.run_onnx(session, x)
        ort = median_time(lambda: deployment.run_onnx(session, x), repeat)
        error = max(deployment.relative_error(a, e) for a, e in zip(actual, expected))
        print(f'{family}-{arch:<6} {height:>4}x{width:<5} {"dynamic" if dynamic else "fixed":<8}'
              f'eager {eager:7.3f} s  onnxruntime {ort:7.3f} s  (x{eager / ort:4.2f})  '
              f'max rel err {error:.1e}  export {export_s:5.0f} s', flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    families = FAMILIES if args.family == 'both' else (args.family,)
    print(f'CPU, {threads} threads, torch {torch.__version__}, batch 1, median of '
          f'{args.repeat} runs after one warm-up', flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for family in families:
            benchmark(family, args.arch, args.sizes, args.repeat, threads, folder)


if __name__ == '__main__':
    run_main(main)
