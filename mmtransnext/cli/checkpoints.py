"""Checkpoints named by a config or an option: found, downloaded, read and checked to fit
before the Runner starts."""
import contextlib
import os.path as osp
from typing import Any, Iterator, List, Optional, Tuple

import torch

from ..checkpoint import (CheckpointError, cached_download, convert_official_classifier,
                          extract_state_dict, is_url, non_finite_weights_allowed,
                          read_checkpoint)
from .errors import ToolError
from .paths import check_file

#: Checkpoint locations that mmengine's own loaders resolve (local files and ``http(s)://`` URLs
#: are read by :func:`mmtransnext.checkpoint.read_checkpoint`).
MMENGINE_PREFIXES = ('torchvision://', 'open-mmlab://', 'mmcls://', 'pavi://', 's3://',
                     'openmmlab://', 'modelzoo://')


def _pretrained_paths(node: Any, where: str,
                      owner: Optional[str] = None) -> Iterator[Tuple[str, str, Optional[str]]]:
    """``(where, path, type of the module it initialises)`` of every local-looking checkpoint."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            yield f'{where}.checkpoint', node['checkpoint'], owner
        if isinstance(node.get('pretrained'), str):
            yield f'{where}.pretrained', node['pretrained'], node.get('type')
        kind = node.get('type') if isinstance(node.get('type'), str) else owner
        for key, value in node.items():
            yield from _pretrained_paths(value, f'{where}.{key}', kind)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_paths(value, f'{where}[{i}]', owner)


def _weights_hint(module_type: Optional[str]) -> str:
    """Where the official weights of ``module_type`` come from (the class's
    ``pretrained_weights``), if the registry knows it."""
    if not module_type:
        return ''
    from mmengine.registry import MODELS
    with MODELS.switch_scope_and_registry(None) as registry:
        cls = registry.get(module_type)
    source = getattr(cls, 'pretrained_weights', '')
    return f'Download the official weights ({source}) to that path, or ' if source else ''


def check_pretrained(cfg, config_path: str) -> None:
    """Raise if a local ``init_cfg`` / ``pretrained`` checkpoint of the model is missing, or a
    URL one cannot be downloaded (it is downloaded here, once: the model's initialisation then
    reads the local copy)."""
    for where, path, owner in _pretrained_paths(cfg.model, 'model'):
        if is_url(path):
            try:
                cached_download(path)
            except CheckpointError as err:
                raise ToolError(f'{where} of {config_path}: {err}') from err
            continue
        if path.startswith(MMENGINE_PREFIXES) or osp.isfile(path):
            continue
        option = where.rsplit('.', 1)[0]
        hint = _weights_hint(owner)
        raise ToolError(
            f'{where} of {config_path}: checkpoint file not found: {path}\n'
            f'{hint or "P"}{"p" if hint else ""}ass --cfg-options {where}=/path/to/file, '
            f'or --cfg-options {option}=None to start from random weights.')


def allow_non_finite(enabled: bool) -> contextlib.AbstractContextManager:
    """A context for a tool's run: with ``enabled``, every checkpoint read inside it (the tool's
    own checks, and what mmengine loads: ``load_from``, ``--resume``, init_cfg) may hold
    non-finite weights (:func:`mmtransnext.checkpoint.non_finite_weights_allowed`)."""
    return non_finite_weights_allowed() if enabled else contextlib.nullcontext()


def read_checkpoint_arg(path: str, what: str) -> dict:
    """A checkpoint named by an option, read (without executing it) and checked to hold finite
    weights before anything is written; errors name ``what``."""
    if not is_url(path):
        check_file(path, what)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as err:
        raise ToolError(f'{what}: {err}') from err
    if not isinstance(checkpoint, dict):
        raise ToolError(f'{what} {path} holds a {type(checkpoint).__name__}, not a checkpoint')
    return checkpoint


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def check_checkpoint_fits(model: torch.nn.Module, path: str,
                          checkpoint: Optional[dict] = None) -> None:
    """Raise :class:`ToolError` naming ``path`` unless its weights fit ``model`` exactly.

    ``checkpoint``: the file's content when already read (:func:`read_checkpoint_arg`). An
    official ImageNet classifier file is checked in the layout it loads in (the conversion
    raises a CheckpointError if it does not fit)."""
    if checkpoint is None:
        checkpoint = read_checkpoint_arg(path, 'checkpoint file')
    state = extract_state_dict(checkpoint, prefix='')
    convert_official_classifier(state, _unwrap(model))
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def preview(keys: List[str]) -> str:
            return ', '.join(keys[:4]) + (f' ... (+{len(keys) - 4})' if len(keys) > 4 else '')
        parts = []
        if missing:
            parts.append(f'{len(missing)} of the model\'s {len(own)} tensors missing '
                         f'[{preview(missing)}]')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected [{preview(unexpected)}]')
        if shapes:
            parts.append(f'{len(shapes)} with another shape (checkpoint vs model) '
                         f'[{preview(shapes)}]')
        raise ToolError(f'checkpoint {path} does not fit the model of this config: '
                        + '; '.join(parts) + '. Was it trained with this config / arch?')
