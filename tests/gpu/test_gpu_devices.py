"""Behaviour on the GPU beyond the numbers: ``torch.use_deterministic_algorithms(True)`` with the
Triton path (its backward adds float32 gradients with atomics, so it must raise torch's
nondeterminism error; its forward is deterministic and runs), and tensors on a second GPU
while the first is current."""
import warnings

import pytest
import torch

from gpu_helpers import BACKENDS, CPU, layer_geometry, skip_unavailable
from mmtransnext.models.layers.attention import AggregatedAttention
from reference import perturb_

pytestmark = pytest.mark.gpu

NONDETERMINISTIC = 'does not have a deterministic implementation'
SIZE, POOL, PRETRAIN = (37, 53), (4, 6), (6, 6)


def _layer(backend: str, device: torch.device, only_local_bias: bool = False):
    mode, impl = BACKENDS[backend]
    torch.manual_seed(6)
    layer = perturb_(AggregatedAttention(48, 2, 3, 2, attn_impl=impl,
                                         attention_mode=mode)).to(device)
    if only_local_bias:
        # Only parameters the attention op takes directly get gradients: the backward is then
        # the op's backward alone (pooling, the CPB MLP and the projections have backwards of
        # their own that torch flags as nondeterministic on CUDA).
        for name, p in layer.named_parameters():
            p.requires_grad_(name in ('relative_pos_bias_local', 'query_embedding'))
    return layer


def _forward(layer, device, requires_grad=True):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, SIZE[0] * SIZE[1], 48, generator=gen).to(device)
    x.requires_grad_(requires_grad)
    return x, layer(x, layer_geometry(SIZE, POOL, 3, None, PRETRAIN, device))


@pytest.fixture
def deterministic(monkeypatch):
    """Deterministic algorithms on (cuBLAS is deterministic with this workspace setting, so it
    raises nothing itself); off again afterwards."""
    monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', ':4096:8')

    def enable(warn_only=False):
        torch.use_deterministic_algorithms(True, warn_only=warn_only)

    yield enable
    torch.use_deterministic_algorithms(False)


def _nondeterminism_warnings(backend, deterministic):
    deterministic(warn_only=True)
    layer = _layer(backend, torch.device('cuda'), only_local_bias=True)
    _, out = _forward(layer, torch.device('cuda'), requires_grad=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out.square().sum().backward()
    return [str(w.message) for w in caught if NONDETERMINISTIC in str(w.message)]


def test_triton_backward_raises_under_deterministic_algorithms(deterministic):
    layer = _layer('triton', torch.device('cuda'), only_local_bias=True)
    _, expected = _forward(layer, torch.device('cuda'), requires_grad=False)
    deterministic()
    _, out = _forward(layer, torch.device('cuda'), requires_grad=False)  # forward: no atomics
    torch.testing.assert_close(out, expected)
    with pytest.raises(RuntimeError, match=NONDETERMINISTIC):
        out.square().sum().backward()


def test_only_the_triton_backward_is_flagged(deterministic):
    """The same backward through the PyTorch path raises nothing, so what the test above sees
    is the Triton backward's own alert, not another op's."""
    flagged = _nondeterminism_warnings('triton', deterministic)
    assert any('triton_attention_backward' in message for message in flagged), \
        f'the Triton backward ran under deterministic algorithms without its alert: {flagged}'
    assert not _nondeterminism_warnings('torch', deterministic)


@pytest.mark.parametrize('backend', ['triton', 'ext', 'torch'])
def test_tensors_on_the_second_gpu(backend):
    """Layer and tokens on cuda:1 while cuda:0 is current: kernels must launch on the tensors'
    device (Triton launches on the current one unless told), with the results of cuda:0."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f'one CUDA device here ({torch.cuda.get_device_name(0)}): the second-device '
                    'test needs two')
    skip_unavailable(backend)
    results = []
    for index in (0, 1):
        device = torch.device('cuda', index)
        with torch.cuda.device(0):
            layer = _layer(backend, device)
            x, out = _forward(layer, device)
            grads = torch.autograd.grad(out.square().sum(), [x] + list(layer.parameters()))
            torch.cuda.synchronize(device)
            assert torch.cuda.current_device() == 0
        assert out.device == device and all(g.device == device for g in grads)
        results.append([t.to(CPU) for t in (out, *grads)])
    for first, second in zip(*results):
        torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-5)
