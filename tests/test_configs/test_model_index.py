"""model-index.yml and the metafiles it imports (what ``mim search`` and the model zoo read):
every config is indexed, every indexed config exists, and the indexed parameter counts are those
of the built models (checked where test_configs.py builds them)."""
import glob
import os.path as osp

import pytest
import yaml
from model_index import model_index as _index

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: Each folder follows its library's spelling: mmdet and mmpretrain ``metafile.yml``, mmseg
#: ``metafile.yaml``.
SEGMENTATION_FOLDERS = ('upernet', 'mask2former', 'sem_fpn')
OFFICIAL_HOSTS = ('https://huggingface.co/DaiShiResearch/',
                  'https://github.com/LMMMEng/TransXNet/releases/download/')


def _configs():
    paths = glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    return sorted(osp.relpath(p, ROOT) for p in paths
                  if '_base_' not in p.split(osp.sep) and '/demo/' not in p)


def test_every_config_is_indexed_and_every_indexed_config_exists():
    assert sorted(_index()) == _configs()


def test_each_folder_has_one_metafile_in_its_library_spelling():
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    folders = sorted({p.split('/')[1] for p in _configs()})
    expected = [f'configs/{d}/metafile.{"yaml" if d in SEGMENTATION_FOLDERS else "yml"}'
                for d in folders]
    assert sorted(imports) == expected


@pytest.mark.parametrize('config', _configs())
def test_entry(config):
    model = _index()[config]
    assert model['Name'] == osp.splitext(osp.basename(config))[0]
    assert model['metafile'].startswith(osp.dirname(config) + '/')
    assert isinstance(model['Metadata']['Parameters'], int)
    assert model['Results'] and all(r['Metrics'] for r in model['Results'])
    assert model['Weights'].startswith(OFFICIAL_HOSTS)
