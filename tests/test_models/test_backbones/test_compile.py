"""The backbones under ``torch.compile``: whole graphs once the size-dependent tables exist (in
inference and in training, on every attention backend), same outputs as eager, no
recompilation on a repeated call."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from mmtransnext.models import TransNeXt, TransXNet
from reference import perturb_

ARCH = dict(embed_dims=[16, 32, 64, 128], num_heads=[1, 2, 4, 8], depths=[1, 1, 1, 1])


def _model(impl, fixed, extrapolation):
    model = perturb_(TransNeXt(arch=ARCH, img_size=64, pretrain_size=64, attn_impl=impl,
                               fixed_pool_size=fixed, is_extrapolation=extrapolation)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)  # builds the position tables on the host (torch.unique)
    return model, x, expected


@pytest.mark.parametrize('impl, fixed, extrapolation', [('torch', 2, True), ('ext', None, False)])
def test_no_graph_break_once_the_tables_are_built(impl, fixed, extrapolation):
    model, x, _ = _model(impl, fixed, extrapolation)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason)[:200]
                                              for b in explained.break_reasons]
    assert explained.graph_count == 1


# 'ext' differs from 'torch' by the custom bias op, traced in inference above.
@pytest.mark.parametrize('impl', ['torch', 'triton'])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_no_graph_break_in_training(impl):
    """With gradients the attention ops' autograd (the pooled attention's ``autograd.Function``,
    the custom ops' registered backward) is traced too: still one graph. (The first call at a
    new input size breaks the graph where the position tables are built on the host, e.g. 22
    breaks for this model; that is not measured here.)"""
    model = TransNeXt(arch=ARCH, img_size=64, pretrain_size=64, attn_impl=impl).train()
    x = torch.randn(2, 3, 64, 64)
    model(x)  # builds the position tables
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason)[:200]
                                              for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_transxnet_has_no_graph_break_in_training():
    model = TransXNet(arch=dict(ARCH, num_groups=[2, 2, 2, 2]), pretrain_size=64).train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explained.graph_break_count == 0, [str(b.reason)[:200]
                                              for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_backbone_equals_eager_without_recompiling():
    """Same outputs as eager; one graph, not recompiled by later calls (the table cache's hit
    counter and LRU order, which the guards check, once changed in every call: a recompile
    per call until dynamo's limit, then eager)."""
    model, x, expected = _model('ext', 2, True)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    graphs = []
    with torch.no_grad():
        for _ in range(3):
            for got, want in zip(compiled(x), expected):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            graphs.append(counters['stats']['unique_graphs'])
    assert graphs == [1, 1, 1], graphs
