import os
import sys

# Triton kernels run in Triton's CPU interpreter in the tests (no GPU). @triton.jit reads this
# variable when it decorates, and triton.language decorates its own helpers when triton is
# imported, which happens while torch/mmengine load: it must be set before any import below.
os.environ['TRITON_INTERPRET'] = '1'

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for the `reference` oracle module

import mmtransnext  # noqa: E402,F401  (registers the backbone and the checkpoint loader)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
