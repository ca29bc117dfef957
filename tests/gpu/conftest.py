"""The gpu tier: every backend on a CUDA device against the plain-PyTorch oracle.

Run it where a GPU is, with the Triton kernels compiled (not interpreted):

    pytest tests/gpu -m gpu --confcutdir tests/gpu

``--confcutdir`` keeps ``tests/conftest.py`` out: it sets ``TRITON_INTERPRET=1`` for the CPU
suite, which would make the kernels run in Triton's interpreter here too. ``tools/gpu_check.sh``
runs the tier that way. Without a GPU (CI), or with the kernels interpreted, every test skips
and says why.
"""
import os
import os.path as osp
import sys

import pytest
import torch

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)  # for the `reference` oracle, also under --confcutdir

import mmtransnext  # noqa: E402,F401  (registers the backbone, as tests/conftest.py does)

from gpu_helpers import skip_reason  # noqa: E402


def pytest_runtest_setup(item):
    if item.get_closest_marker('gpu') is not None:
        reason = skip_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Seeded, and float32 products in float32: TF32 (cuDNN's default for convolutions) would
    put 1e-3 errors into the float32 comparisons."""
    torch.manual_seed(0)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pytest_report_header(config):
    if not torch.cuda.is_available():
        return 'gpu tier: no CUDA device'
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    interpret = os.environ.get('TRITON_INTERPRET', '')
    return f'gpu tier: {", ".join(names)}; torch {torch.__version__}; ' \
           f'TRITON_INTERPRET={interpret or "unset"}'
