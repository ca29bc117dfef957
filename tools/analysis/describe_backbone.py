"""Build a backbone family's variants, run an image through each and print stage shapes, size
and time.

    python tools/analysis/describe_backbone.py                       # TransNeXt variants, 224x224
    python tools/analysis/describe_backbone.py --arch tiny --size 800 1216 --mode extrapolation
    python tools/analysis/describe_backbone.py --backbone transxnet --size 512 512
"""
import argparse
import resource
import time

import torch

from mmtransnext.cli import ToolError, positive_int, run_main
from mmtransnext.models.backbones import families, family_named


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backbone', default='transnext',
                        choices=sorted(name.lower() for name in families()))
    parser.add_argument('--arch', nargs='+', default=None,
                        help='variants (default: the family\'s usual ones)')
    parser.add_argument('--size', nargs=2, type=positive_int, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--batch', type=positive_int, default=1)
    parser.add_argument('--img-size', type=positive_int, default=None,
                        help='backbone img_size (default: the larger input side)')
    parser.add_argument('--mode', choices=['interpolation', 'extrapolation'],
                        default='interpolation', help='position-bias mode (TransNeXt)')
    parser.add_argument('--impl', '--attention-mode', dest='impl', default=None,
                        help='implementation (default: the family\'s default), e.g. '
                        'TransNeXt\'s fast or reference')
    parser.add_argument('--runs', type=positive_int, default=1, help='timed forwards after a warm-up')
    parser.add_argument('--threads', type=positive_int, default=None)
    return parser.parse_args(argv)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    args = parse_args(argv)
    fam = family_named(args.backbone)
    archs = args.arch or list(fam.main_archs or fam.arch_presets)
    impl = args.impl or fam.default_implementation
    unknown = [a for a in archs if a not in fam.arch_presets]
    if unknown or impl not in fam.implementations or args.mode not in fam.size_modes:
        raise ToolError(f'{fam.__name__} has archs {list(fam.arch_presets)}, '
                               f'implementations {list(fam.implementations)} and modes '
                               f'{list(fam.size_modes)}')
    if impl in fam.gpu_implementations:
        raise ToolError(f'the {impl} implementation runs its kernels on a GPU only; '
                         f'benchmark_backbone.py counts its launches and memory')
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    print(f'{fam.__name__} backbones on a {args.batch}x3x{height}x{width} input, {args.mode} mode, '
          f'{impl} implementation, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}')
    header = f"{'arch':<11}{'params (M)':>11}{'forward (s)':>13}{'peak RSS (MB)':>15}  stage outputs"
    print(header)
    print('-' * len(header))
    for arch in archs:
        img_size = args.img_size or max(height, width)
        model = fam.for_input_size(arch, (height, width), args.mode, img_size,
                                   **fam.implementations[impl]).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(args.batch, 3, height, width)
        with torch.inference_mode():
            model(x)  # warm-up (also builds the position tables)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                outs = model(x)
                times.append(time.perf_counter() - start)
        shapes = ' '.join('x'.join(map(str, o.shape[1:])) for o in outs)
        print(f'{arch:<11}{params:>11.2f}{min(times):>13.3f}{peak_rss_mb():>15.0f}  {shapes}')


if __name__ == '__main__':
    run_main(main)
