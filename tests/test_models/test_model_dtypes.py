"""A whole model cast with ``.half()`` / ``.bfloat16()`` runs on CPU in that dtype, every
TransNeXt attention mode and backend included, and stays close to the float32 model with the
same weights (at the dtype's precision, relative to the output's scale)."""
import pytest
import torch

from mmtransnext.models import TransNeXt, TransXNet
from reference import perturb_

MODELS = {
    'transnext-fast-ext': lambda: TransNeXt('micro', depths=[1, 1, 1, 1], attn_impl='ext'),
    'transnext-fast-torch': lambda: TransNeXt('micro', depths=[1, 1, 1, 1], attn_impl='torch'),
    'transnext-reference': lambda: TransNeXt('micro', depths=[1, 1, 1, 1],
                                             attention_mode='reference'),
    'transxnet': lambda: TransXNet('t', depths=[1, 1, 1, 1]),
}
#: Largest error allowed, as a share of the largest float32 output of a stage.
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_half_precision_model_is_close_to_float32(name, dtype):
    model = perturb_(MODELS[name]()).eval()
    x = torch.randn(1, 3, 65, 71)
    with torch.no_grad():
        expected = model(x)
        outs = model.to(dtype)(x.to(dtype))
    for out, want in zip(outs, expected):
        assert out.dtype == dtype
        error = (out.float() - want).abs().max() / want.abs().max()
        assert error < TOLERANCE[dtype], f'{name} {dtype}: {error:.2e}'
