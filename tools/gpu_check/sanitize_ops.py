"""A small forward and backward of every GPU kernel of the package, for compute-sanitizer.

tools/gpu_check.sh runs it under ``compute-sanitizer --tool memcheck`` and ``--tool racecheck``
before the gpu test tier, with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so that every tensor is
its own allocation (an out-of-bounds access into a neighbouring tensor of torch's cache would
go unseen):

- the three Triton kernels (forward, query backward, key backward) of aggregated attention
  (TransNeXt-Tiny's first stage: window and pooled keys) and of full attention (its last
  stage), in float32 and under bfloat16 autocast, at an odd batch (two query-backward pairs,
  the second half-filled), odd maps of several query tiles and more pooled keys than one key
  tile;
- the compiled sliding-window ops (csrc/, when built for CUDA): logits, weighted values and
  both backwards, float32 and bfloat16.

Sizes are chosen for coverage, not speed: every launch runs under the sanitizer's
instrumentation. Prints one line per call and ``sanitize_ops: done`` at the end (what the
check looks for besides the exit status).

    python tools/gpu_check/sanitize_ops.py [--batch 3] [--dtypes fp32 bf16]
"""
import argparse
import sys
from typing import Sequence, Tuple

DTYPES = ('fp32', 'bf16')


def _size(text: str) -> Tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW, got {text!r}') from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f'sizes must be positive, got {text!r}')
    return height, width


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=3, help='odd: a half-filled query pair')
    p.add_argument('--dtypes', nargs='+', choices=DTYPES, default=list(DTYPES))
    p.add_argument('--aggregated-size', type=_size, default=(45, 67), metavar='HxW',
                   help='stage-1 map of the aggregated-attention layer (pooled by 8)')
    p.add_argument('--full-size', type=_size, default=(9, 13), metavar='HxW',
                   help='stage-4 map of the full-attention layer (every token a key)')
    p.add_argument('--window-size', type=_size, default=(9, 13), metavar='HxW',
                   help='map of the compiled sliding-window ops')
    p.add_argument('--device', default='cuda',
                   help="'cpu' runs the same calls (Triton interpreted under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error('--batch must be positive')
    return args


def attention_layers(args: argparse.Namespace, torch, device) -> None:
    """One aggregated-attention and one full-attention layer of TransNeXt-Tiny on the Triton
    path, forward and backward (all three kernels) per dtype."""
    from mmtransnext import TransNeXt
    model = TransNeXt('tiny', depths=[1, 1, 1, 1], img_size=512, pretrain_size=224,
                      attn_impl='triton').to(device)
    for stage, size in ((0, args.aggregated_size), (3, args.full_size)):
        geometry = model.stage_geometry(stage, size, device)
        block = getattr(model, f'block{stage + 1}')[0]
        for name in args.dtypes:
            dtype = torch.bfloat16 if name == 'bf16' else torch.float32
            x = torch.randn(args.batch, size[0] * size[1], model.embed_dims[stage],
                            device=device, requires_grad=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = block.attn(block.norm1(x), geometry)
            out.float().square().mean().backward()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            finite = bool(torch.isfinite(x.grad).all())
            kind = type(block.attn).__name__
            print(f'sanitize_ops: triton {kind}, stage {stage + 1}, '
                  f'{size[0]}x{size[1]} map, {geometry.pool_size[0]}x{geometry.pool_size[1]} '
                  f'keys, batch {args.batch}, {name}: forward and backward'
                  + ('' if finite else ' (NON-FINITE input gradient)'), flush=True)
            if not finite:
                raise SystemExit(f'sanitize_ops: non-finite gradient ({kind}, {name})')


def window_ops(args: argparse.Namespace, torch, device) -> None:
    """The compiled sliding-window ops, forward and backward per dtype (skipped, and said so,
    where they are not built for the device)."""
    from mmtransnext.ops import extension
    from mmtransnext.ops.window_ops import sliding_window_av_ext, sliding_window_qk_ext
    reason = extension.unsupported_reason(device.type, torch.float32)
    if reason:
        print(f'sanitize_ops: compiled window ops skipped: {reason}', flush=True)
        return
    size, window, heads, dim = args.window_size, 3, 2, 24
    for name in args.dtypes:
        dtype = torch.bfloat16 if name == 'bf16' else torch.float32
        q, k, v = (torch.randn(args.batch, heads, size[0] * size[1], dim, device=device,
                               dtype=dtype, requires_grad=True) for _ in range(3))
        rpb = torch.randn(heads, window ** 2, device=device, dtype=dtype, requires_grad=True)
        logits = sliding_window_qk_ext(q, k, rpb, size, window)
        out = sliding_window_av_ext(logits.float().softmax(-1).to(dtype), v, size, window)
        out.float().square().sum().backward()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        print(f'sanitize_ops: compiled window ops, {size[0]}x{size[1]} map, window {window}, '
              f'batch {args.batch}, {name}: forward and backward', flush=True)


def main(argv: Sequence[str] = None) -> int:
    args = parse_args(argv)
    import torch
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('sanitize_ops: no CUDA device', file=sys.stderr)
        return 2
    torch.manual_seed(0)
    attention_layers(args, torch, device)
    window_ops(args, torch, device)
    print('sanitize_ops: done', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
