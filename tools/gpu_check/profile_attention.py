"""One stage-1 attention call of TransNeXt-Tiny on the Triton path, for Nsight Compute.

The first aggregated-attention block of TransNeXt-Tiny (72 channels, 3 heads, 3x3 window,
pooled by 8) at the stage-1 map of an 800x1216 input (200x304 tokens, 25x38 pooled keys),
bf16 autocast, one forward and one backward: three Triton launches (``_attention_fwd``,
``_attention_bwd_query``, ``_attention_bwd_keys``), what tools/gpu_check.sh profiles with

    ncu --kernel-name regex:_attention --launch-count 3 --section SpeedOfLight \\
        --section Occupancy python tools/gpu_check/profile_attention.py
"""
import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', nargs=2, type=int, default=[800, 1216], metavar=('H', 'W'))
    parser.add_argument('--dtype', choices=['bf16', 'fp32'], default='bf16')
    args = parser.parse_args()
    import torch

    from mmtransnext import TransNeXt
    if not torch.cuda.is_available():
        print('profile_attention: no CUDA device', file=sys.stderr)
        return 2
    device = torch.device('cuda')
    # Interpolation mode, trained at 800 (512 for smaller inputs), as the recipes and
    # tools/analysis/gpu_benchmark.py build it.
    img_size = 800 if max(args.size) >= 800 else 512
    model = TransNeXt('tiny', depths=[1, 1, 1, 1], img_size=img_size, pretrain_size=224,
                      attn_impl='triton').to(device)
    size = (-(-args.size[0] // 4), -(-args.size[1] // 4))  # stage 1: stride 4
    geometry = model.stage_geometry(0, size, device)
    block = model.block1[0]
    x = torch.randn(1, size[0] * size[1], model.embed_dims[0], device=device,
                    requires_grad=True)
    dtype = torch.bfloat16 if args.dtype == 'bf16' else torch.float32
    with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
        out = block.attn(block.norm1(x), geometry)
    out.float().square().mean().backward()
    torch.cuda.synchronize()
    print(f'profile_attention: stage 1 of TransNeXt-Tiny at {args.size[0]}x{args.size[1]}: '
          f'{size[0]}x{size[1]} tokens, {geometry.pool_size[0]}x{geometry.pool_size[1]} pooled '
          f'keys, {args.dtype}, forward and backward')
    return 0


if __name__ == '__main__':
    sys.exit(main())
