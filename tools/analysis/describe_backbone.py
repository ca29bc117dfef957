"""Build TransNeXt variants, run an image through each and print stage shapes, size and time.

    python tools/analysis/describe_backbone.py                       # all variants, 224x224
    python tools/analysis/describe_backbone.py --arch tiny --size 800 1216 --mode extrapolation
"""
import argparse
import resource
import time

import torch

from mmtransnext.models import ARCH_SETTINGS, TransNeXt


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', nargs='+', default=['micro', 'tiny', 'small', 'base'],
                        choices=sorted(ARCH_SETTINGS))
    parser.add_argument('--size', nargs=2, type=int, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--img-size', type=int, default=None,
                        help='backbone img_size (default: the larger input side)')
    parser.add_argument('--mode', choices=['interpolation', 'extrapolation'],
                        default='interpolation')
    parser.add_argument('--attention-mode', choices=['fast', 'reference'], default='fast')
    parser.add_argument('--runs', type=int, default=1, help='timed forwards after a warm-up')
    parser.add_argument('--threads', type=int, default=None)
    return parser.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    print(f'TransNeXt backbones on a {args.batch}x3x{height}x{width} input, {args.mode} mode, '
          f'{args.attention_mode} attention, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}')
    header = f"{'arch':<11}{'params (M)':>11}{'forward (s)':>13}{'peak RSS (MB)':>15}  stage outputs"
    print(header)
    print('-' * len(header))
    for arch in args.arch:
        img_size = args.img_size or max(height, width)
        model = TransNeXt(arch, img_size=img_size, pretrain_size=224,
                          is_extrapolation=args.mode == 'extrapolation',
                          attention_mode=args.attention_mode).eval()
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
    main()
