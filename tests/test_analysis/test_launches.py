"""tools/analysis/launches.py (developer tooling): what the counter counts, and the GPU path's launches: flat in
the input size under a GPU's chunk budgets, within the target per attention block; the fast
path's grow with the input (the counter can tell)."""
import contextlib

import pytest
import torch

from launches import (DEFAULT_GPU_MEMORY, count_launches, first_aggregated_attention,
                      triton_kernel_counters)

from mmtransnext.models import TransNeXt
from mmtransnext.ops import triton_kernels
from mmtransnext.ops.budget import gpu_budgets
from mmtransnext.ops.device import assumed_device, launch_kernel

#: Micro's widths and heads, one block per stage (three aggregated-attention blocks, one full).
ARCH = dict(embed_dims=[48, 96, 192, 384], num_heads=[2, 4, 8, 16], depths=[1, 1, 1, 1])
#: The target of issue 10: launches of one aggregated-attention block's forward on the GPU path.
BLOCK_TARGET = 25


def _count(impl: str, size, train: bool, gpu: bool):
    """Launches of a warm inference forward (batch 1) or training step (batch 2); extrapolation
    mode, where the CPB MLP's loop follows the input size."""
    model = TransNeXt(ARCH, img_size=64, pretrain_size=224, is_extrapolation=True,
                      attn_impl=impl).train(train)
    x = torch.randn(2 if train else 1, 3, *size)

    def step():
        if train:
            sum(o.float().mean() for o in model(x)).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    with gpu_budgets(DEFAULT_GPU_MEMORY) if gpu else contextlib.nullcontext():
        return count_launches(step, first_aggregated_attention(model))


def test_counter_counts_launches_syncs_and_the_block():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)

    def step():
        y = lin(x).view(3, 2).t()  # addmm; views launch nothing
        torch.empty(5)  # allocation launches nothing
        return (y * 2).sum().item()  # mul, sum; item is a host sync

    count = count_launches(step, block=lin)
    assert (count.aten, count.triton, count.syncs, count.block) == (3, 0, 1, 1)
    assert count.launches == 3
    assert lin._forward_hooks == {} and lin._forward_pre_hooks == {}  # hooks removed
    assert count_launches(step).block is None


def test_triton_kernels_are_counted_not_run_and_restored():
    saved = triton_kernels._attention_fwd
    before = assumed_device()
    with triton_kernel_counters() as totals:
        launch_kernel(triton_kernels._attention_fwd, (4, 2))(torch.zeros(1))
        launch_kernel(triton_kernels._attention_bwd_keys, (1, ))()
    assert totals['triton'] == 2
    assert triton_kernels._attention_fwd is saved  # the kernels are never replaced
    assert assumed_device() is before and before.launcher is None  # launches run again


@pytest.mark.parametrize('train', [False, True], ids=['infer', 'train'])
def test_triton_path_launches_are_flat_under_gpu_budgets(train):
    small, large = (_count('triton', size, train, gpu=True) for size in [(128, 160), (256, 320)])
    assert small == large
    # One kernel per attention call forward, two more per call backward; no host sync.
    assert small.triton == (12 if train else 4) and small.syncs == 0
    if not train:
        assert small.block <= BLOCK_TARGET
    else:  # with this machine's budgets the training step's CPB MLP loop grows with the input
        assert _count('triton', (128, 160), train, gpu=False).launches < \
            _count('triton', (256, 320), train, gpu=False).launches


def test_fast_path_launches_grow_with_the_input():
    small, large = (_count('auto', size, False, gpu=False) for size in [(128, 160), (384, 512)])
    assert small.triton == large.triton == 0
    assert small.launches < large.launches and small.block < large.block
