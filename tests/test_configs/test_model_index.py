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


#: What the released file of each config folder is called (the official names: huggingface.co
#: DaiShiResearch model cards, LMMMEng/TransXNet v1.0 release assets).
RELEASED_NAME = {'mask_rcnn': ('mask_rcnn_transnext_', 'maskrcnn_'), 'retinanet': ('retinanet_',),
                 'sem_fpn': ('sfpn_transxnet_',), 'dino': ('dino_',), 'upernet': ('upernet_',),
                 'mask2former': ('mask2former_',), 'classification': ('transnext_', 'transx-')}


@pytest.mark.parametrize('config', _configs())
def test_weights_are_the_released_file_of_that_task_and_size(config):
    weights = osp.basename(_index()[config]['Weights'])
    folder = config.split('/')[1]
    assert weights.startswith(RELEASED_NAME[folder]), weights
    size = next(s for s in ('micro', 'tiny', 'small', 'base') if f'-{s}' in config)
    assert size in weights or f'transx-{size[0]}' in weights, weights


def test_readme_model_zoo_links_each_release():
    """The README's model zoo rows link the metafiles' ``Weights`` and ``Training Log`` (the one
    source of truth)."""
    with open(osp.join(ROOT, 'README.md')) as f:
        rows = [line for line in f if line.startswith('|') and '.py`' in line]
    for config, model in _index().items():
        rel = config[len('configs/'):]
        if rel.startswith('classification/'):
            rel = rel[len('classification/'):]
        row = [line for line in rows if f'`{rel}`' in line]
        assert len(row) == 1, f'{rel}: {len(row)} README rows'
        assert f'[weights]({model["Weights"]})' in row[0], rel
        if 'Training Log' in model:
            assert f'[log]({model["Training Log"]})' in row[0], rel
        else:
            assert '[log](' not in row[0], rel


def test_training_logs_are_the_released_logs():
    """Each ``Training Log`` sits beside its weights (same model card or release), and every
    downstream release has one (the official READMEs link a log for each)."""
    for config, model in _index().items():
        log = model.get('Training Log')
        if log is None:
            assert config.startswith('configs/classification/'), config
            continue
        assert log.rsplit('/', 1)[0].replace('/raw/', '/resolve/') == \
            model['Weights'].rsplit('/', 1)[0], config
        assert log.endswith(('.json', '.txt')), log
