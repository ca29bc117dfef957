import os
import sys

# Triton kernels run in Triton's CPU interpreter in the tests (no GPU). @triton.jit reads this
# variable when it decorates, and triton.language decorates its own helpers when triton is
# imported, which happens while torch/mmengine load: it must be set before any import below.
os.environ['TRITON_INTERPRET'] = '1'

# Under pytest-xdist (README's test command runs one worker per core), each worker and the
# tools it starts get an equal share of the cores: more threads than cores make OpenMP's
# spinning threads wait on each other.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for the `reference` oracle module

import mmtransnext  # noqa: E402,F401  (registers the backbone and the checkpoint loader)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
