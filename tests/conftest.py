import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for the `reference` oracle module

import mmtransnext  # noqa: E402,F401  (registers the backbone and the checkpoint loader)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
