"""The dataset files a config reads: generated on first use where the dataset class can, else
checked to exist."""
import os
import os.path as osp
from typing import Any, Iterator, List, Sequence, Tuple

from .errors import ToolError

#: Dataset paths relative to ``data_root`` (besides ``ann_file``).
PATH_KEYS = ('img', 'img_path', 'seg_map_path', 'seg', 'ann')


def _datasets(node: Any, where: str) -> Iterator[Tuple[str, dict]]:
    """Dataset configs under a dataloader/dataset config, through wrapper datasets."""
    if not isinstance(node, dict):
        return
    if 'dataset' in node:
        yield from _datasets(node['dataset'], f'{where}.dataset')
    if 'datasets' in node:
        for i, sub in enumerate(node['datasets']):
            yield from _datasets(sub, f'{where}.datasets[{i}]')
    if 'data_root' in node or 'ann_file' in node or 'data_prefix' in node:
        yield where, node


def _dataset_class(dataset_cfg: dict):
    from mmengine.registry import DATASETS
    kind = dataset_cfg.get('type')
    if not isinstance(kind, str):
        return kind
    with DATASETS.switch_scope_and_registry(None) as registry:  # the default scope's registry
        return registry.get(kind)


def check_data(cfg, config_path: str, loaders: Sequence[str]) -> None:
    """Generate datasets that are generated on first use; raise if any dataset file is missing.

    Args:
        cfg: the config.
        config_path: for the message.
        loaders: dataloader keys to check, e.g. ``('train_dataloader', 'val_dataloader')``;
            the matching evaluators' ``ann_file`` are checked too.
    """
    missing: List[str] = []
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        for where, ds in _datasets(loader_cfg, loader):
            if ds.get('backend_args'):
                continue  # not the local file system
            cls = _dataset_class(ds)
            if cls is not None and hasattr(cls, 'generate_files'):
                cls.generate_files(ds)
            root = ds.get('data_root') or ''
            if root and not osp.isdir(root):
                missing.append(f'{where}.data_root: {root}')
                continue
            ann = ds.get('ann_file')
            if ann:
                ann_path = ann if osp.isabs(ann) else osp.join(root, ann)
                if not osp.exists(ann_path):
                    missing.append(f'{where}.ann_file: {ann_path}')
            for key, prefix in (ds.get('data_prefix') or {}).items():
                if key in PATH_KEYS and prefix:
                    path = prefix if osp.isabs(prefix) else osp.join(root, prefix)
                    if not osp.isdir(path):
                        missing.append(f'{where}.data_prefix.{key}: {path}')
        evaluator = cfg.get(loader.replace('dataloader', 'evaluator'))
        for i, metric in enumerate(evaluator if isinstance(evaluator, list) else [evaluator]):
            if isinstance(metric, dict) and metric.get('ann_file') and \
                    not metric.get('backend_args') and not osp.exists(metric['ann_file']):
                name = loader.replace('dataloader', 'evaluator')
                missing.append(f'{name}{f"[{i}]" if isinstance(evaluator, list) else ""}'
                               f'.ann_file: {metric["ann_file"]}')
    if missing:
        lines = '\n  '.join(missing)
        raise ToolError(
            f'dataset files of {config_path} not found (relative paths are relative to '
            f'{os.getcwd()}):\n  {lines}\nPut the dataset there (see the mmdet / mmseg '
            f'dataset preparation docs) or point the config at it, e.g. --cfg-options '
            f'{loaders[0]}.dataset.data_root=/path/to/data/')
