import os.path as osp
import sys

import pytest

# tools/ holds cli_common, which the tests import like the tools do
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools'))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
    """A directory holding both generated sets (as data/generated/ holds them)."""
    from mmtransnext.datasets import ensure_shapes_ade, ensure_shapes_coco
    root = str(tmp_path_factory.mktemp('generated'))
    ensure_shapes_coco(osp.join(root, 'shapes_coco'))
    ensure_shapes_ade(osp.join(root, 'shapes_ade'))
    return root
