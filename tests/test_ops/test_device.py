"""mmtransnext.ops.device: the ops read the device through one context object, which
measurement code sets for a block and which nothing else changes."""
import dataclasses

import pytest
import torch

from mmtransnext.ops import budget
from mmtransnext.ops import triton_attention as ta
from mmtransnext.ops.device import (DeviceProperties, assume_device, assumed_device,
                                    launch_kernel)


def test_defaults_read_the_real_device():
    real = assumed_device()
    assert real == DeviceProperties()
    assert real.total_memory is None and real.multiprocessors is None and real.launcher is None
    assert real.switch_device and not real.cpu_as_cuda and real.self_test is None


def test_assumed_properties_hold_for_the_block_only_and_nest():
    outer = DeviceProperties(total_memory=8 << 30)
    with assume_device(outer) as got:
        assert got is outer and assumed_device() is outer
        inner = dataclasses.replace(assumed_device(), multiprocessors=4)
        with assume_device(inner):
            assert assumed_device().total_memory == 8 << 30
            assert assumed_device().multiprocessors == 4
        assert assumed_device() is outer
    assert assumed_device() == DeviceProperties()


def test_an_error_inside_the_block_restores_the_real_device():
    with pytest.raises(KeyError), assume_device(DeviceProperties(multiprocessors=2)):
        raise KeyError('boom')
    assert assumed_device() == DeviceProperties()


@pytest.mark.parametrize('kwargs, match', [
    (dict(total_memory=0), 'total_memory'),
    (dict(multiprocessors=-1), 'multiprocessors'),
    (dict(total_memory=1.5), 'total_memory'),
    (dict(cpu_as_cuda=True), 'cpu_as_cuda needs total_memory'),
])
def test_bad_properties_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceProperties(**kwargs)
    with pytest.raises(TypeError, match='DeviceProperties'):
        with assume_device({'total_memory': 1}):
            pass


def test_chunk_budgets_take_the_assumed_memory_without_asking_cuda():
    """No GPU is asked: on a machine without one, asking would raise."""
    cuda = torch.device('cuda', 0)
    with assume_device(DeviceProperties(total_memory=16 << 30)):
        assert budget.element_budget(cuda, 7, buffers=1) == (1 << 30) // 4
        assert budget.element_budget(torch.device('cpu'), 7) == 7  # CPU keeps its chunks
    with assume_device(DeviceProperties(total_memory=16 << 30, cpu_as_cuda=True)):
        assert budget.element_budget(torch.device('cpu'), 7, buffers=1) == (1 << 30) // 4
    with budget.gpu_budgets(32 << 30):  # the same, spelt for launch counting
        assert budget.element_budget(torch.device('cpu'), 7, buffers=2) == (1 << 30) // 4
    assert budget.element_budget(torch.device('cpu'), 7) == 7


def test_key_splits_fill_two_waves_of_the_assumed_multiprocessors():
    # one program, 1000 query tiles: 2 * SMs runs, none shorter than MIN_TILES_PER_SPLIT tiles
    assert ta.key_splits(1, 1000, torch.device('cpu')) == 1000 // ta.MIN_TILES_PER_SPLIT
    with assume_device(DeviceProperties(multiprocessors=10)):
        assert ta.key_splits(1, 1000, torch.device('cpu')) == 20
        assert ta.key_splits(1, 1000, torch.device('cuda', 0)) == 20  # no device asked


def test_launcher_stands_in_for_kernel_grid():
    calls = []

    class Kernel:  # what kernel[grid](*args) needs
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append(('ran', grid, args))

    kernel = Kernel()
    launch_kernel(kernel, (3,))(1, 2)

    def launcher(kernel, grid):
        return lambda *args, **kwargs: calls.append(('recorded', grid, args, kwargs))

    with assume_device(DeviceProperties(launcher=launcher)):
        launch_kernel(kernel, (4, 2))(5, BLOCK=16)
    launch_kernel(kernel, (1,))()
    assert calls == [('ran', (3,), (1, 2)), ('recorded', (4, 2), (5,), {'BLOCK': 16}),
                     ('ran', (1,), ())]
