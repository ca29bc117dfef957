"""The model index (model-index.yml and its metafiles) as the tests read it."""
import functools
import os.path as osp
from typing import Dict

import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def model_index() -> Dict[str, dict]:
    """``{config path: its entry}`` over every metafile model-index.yml imports."""
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    models = {}
    for path in imports:
        with open(osp.join(ROOT, path)) as f:
            meta = yaml.safe_load(f)
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            assert model['Config'] not in models, f'{model["Config"]} indexed twice'
            models[model['Config']] = dict(model, metafile=path)
    return models


def indexed_parameters(rel: str) -> int:
    """Parameter count the model index gives for ``configs/<rel>``."""
    return model_index()[f'configs/{rel}']['Metadata']['Parameters']
