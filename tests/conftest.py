import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for the `reference` oracle module

import mmtransnext  # noqa: E402,F401  (registers the backbone and the checkpoint loader)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturb_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Move every parameter off its init (zeros/ones would hide mistakes)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model
