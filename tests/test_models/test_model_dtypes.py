"""A whole model cast with ``.half()`` / ``.bfloat16()`` runs on CPU in that dtype, every
TransNeXt attention mode and backend included, and stays close to the float32 model with the
same weights (at the dtype's precision, relative to the output's scale)."""
import pytest
import torch

from mmtransnext.models import TransNeXt, TransXNet
from reference import assert_cast_model_close, perturb_

MODELS = {
    'transnext-fast-ext': lambda: TransNeXt('micro', depths=[1, 1, 1, 1], attn_impl='ext'),
    'transnext-fast-torch': lambda: TransNeXt('micro', depths=[1, 1, 1, 1], attn_impl='torch'),
    'transnext-reference': lambda: TransNeXt('micro', depths=[1, 1, 1, 1],
                                             attention_mode='reference'),
    'transxnet': lambda: TransXNet('t', depths=[1, 1, 1, 1]),
}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_half_precision_model_is_close_to_float32(name, dtype):
    assert_cast_model_close(perturb_(MODELS[name]()).eval(), torch.randn(1, 3, 65, 71), dtype)
