"""Checkpoint reading and loading: the one place the package touches ``torch.load``.

Two kinds of files, two levels of trust:

- Pretrained / backbone weights (``init_cfg=dict(type='Pretrained', ...)``) are plain tensors and
  are always read with ``torch.load(weights_only=True)``: a downloaded file cannot run code.
- Runner checkpoints (``load_from``, ``--resume``) also hold optimizer state, message-hub buffers
  and numpy scalars, which torch >= 2.6 refuses by default and mmengine 0.10.7 does not handle.
  Importing :mod:`mmtransnext` registers a local-file loader with mmengine's
  ``CheckpointLoader`` that first tries ``weights_only=True`` and unpickles fully only when the
  load was asked for on purpose: inside ``Runner.load_checkpoint`` (used by ``load_from`` and
  ``resume``), inside :func:`trusted_checkpoints`, or with ``MMTRANSNEXT_TRUSTED_CHECKPOINTS=1``.
  Anywhere else such a file fails with a message saying why and how to allow it.
"""
import contextlib
import contextvars
import functools
import os
import os.path as osp
import pickle
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

TRUSTED_ENV = 'MMTRANSNEXT_TRUSTED_CHECKPOINTS'
_TRUSTED = contextvars.ContextVar('mmtransnext_trusted_checkpoints', default=False)

#: Keys of an ImageNet classifier that a backbone never has; dropped silently but reported
#: (TransNeXt: ``head.``; TransXNet: ``classifier.``).
CLASSIFIER_PREFIXES = ('head.', 'fc.', 'classifier.')


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or does not fit the model."""


@contextlib.contextmanager
def trusted_checkpoints() -> Iterator[None]:
    """Allow full unpickling of local checkpoints read inside this block."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _env_trusted() -> bool:
    return os.environ.get(TRUSTED_ENV, '') == '1'


def read_checkpoint(filename: str, map_location='cpu', allow_pickle: Optional[bool] = None):
    """Read a local checkpoint file.

    Args:
        filename: path of the file.
        map_location: as for :func:`torch.load`.
        allow_pickle: whether a file holding more than tensors may be unpickled in full. None
            decides from the context (:func:`trusted_checkpoints`, ``Runner.load_checkpoint``)
            and ``MMTRANSNEXT_TRUSTED_CHECKPOINTS``.
    """
    path = osp.expanduser(str(filename))
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    if allow_pickle is None:
        allow_pickle = _TRUSTED.get() or _env_trusted()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if allow_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        raise CheckpointError(
            f'{filename} holds Python objects besides tensors, and unpickling them could run '
            f'code, so it was not loaded here (torch.load weights_only=True refused: '
            f'{str(err).splitlines()[0]}). Runner checkpoints load through load_from / '
            f'--resume; if you trust this file elsewhere, set {TRUSTED_ENV}=1 or load it inside '
            f'mmtransnext.checkpoint.trusted_checkpoints().') from err
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f'{filename} is not a readable PyTorch checkpoint: {err}') from err


def _local_loader(filename: str, map_location=None):
    """mmengine ``CheckpointLoader`` backend for local files (see the module docstring)."""
    return read_checkpoint(filename, map_location)


def _trusting(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with trusted_checkpoints():
            return method(*args, **kwargs)

    wrapper._mmtransnext_trusting = True
    return wrapper


def install_mmengine_loader() -> None:
    """Make mmengine read local checkpoints through :func:`read_checkpoint` (idempotent)."""
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=_local_loader, force=True)
    if not getattr(Runner.load_checkpoint, '_mmtransnext_trusting', False):
        Runner.load_checkpoint = _trusting(Runner.load_checkpoint)


def extract_state_dict(checkpoint, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint, unwrapped from ``state_dict``/``model`` and ``module.``.

    With ``prefix`` (e.g. ``'backbone'``) only keys under it are kept, without it. Without
    ``prefix``, a file whose keys start with ``backbone.`` (an mmdet/mmseg model) yields its
    backbone part; an official ImageNet file (``{'model': ...}``) yields its keys unchanged.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    state = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    state = {(k[len('module.'):] if k.startswith('module.') else k): v
             for k, v in state.items() if isinstance(v, torch.Tensor)}
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone'
    if prefix:
        head = prefix.rstrip('.') + '.'
        state = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
        if not state:
            raise CheckpointError(f'no key of the checkpoint starts with {head!r}')
    return state


@dataclass
class LoadReport:
    """What a :func:`load_pretrained` call did, key by key."""
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)


def _preview(keys: List[str], most: int = 8) -> str:
    more = f' ... (+{len(keys) - most} more)' if len(keys) > most else ''
    return ', '.join(keys[:most]) + more


def load_pretrained(model: nn.Module, filename: str, prefix: Optional[str] = None,
                    map_location='cpu', strict: bool = True,
                    optional: Sequence[str] = (), allow_pickle: bool = False) -> LoadReport:
    """Load official weights (ImageNet or mmdet/mmseg files) into the backbone ``model``.

    Reads with ``weights_only=True`` (unless ``MMTRANSNEXT_TRUSTED_CHECKPOINTS=1``, or
    ``allow_pickle`` for a runner checkpoint a user passed to a tool on purpose), drops the
    classifier head, and logs loaded / missing / unexpected keys. Raises
    :class:`CheckpointError` when no key matches, when a shape differs (a different arch), or,
    with ``strict``, when keys are missing or left over. Missing keys that start with one of
    ``optional`` (parts a pretraining file legitimately lacks, e.g. output norms added for
    dense prediction) keep their initialisation and are reported, not refused.
    """
    checkpoint = read_checkpoint(filename, map_location,
                                 allow_pickle=allow_pickle or _env_trusted())
    state = extract_state_dict(checkpoint, prefix)
    own = model.state_dict()
    report = LoadReport()
    mismatched = []
    for key, value in state.items():
        if key in own:
            if own[key].shape == value.shape:
                report.loaded.append(key)
            else:
                mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                                  f'{tuple(own[key].shape)}')
        elif key.startswith(CLASSIFIER_PREFIXES):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    absent = [k for k in own if k not in state]
    report.kept_init = [k for k in absent if optional and k.startswith(tuple(optional))]
    report.missing = [k for k in absent if k not in report.kept_init]
    name = type(model).__name__
    if not report.loaded:
        raise CheckpointError(f'no key of {filename} matches {name} (checkpoint keys: '
                              f'{_preview(sorted(state))}); is it a {name} checkpoint?')
    if mismatched:
        raise CheckpointError(f'{filename} does not fit this {name}: {len(mismatched)} shape '
                              f'mismatch(es), e.g. {_preview(mismatched, 4)}; check arch')
    if strict and (report.missing or report.unexpected):
        parts = [f'{len(keys)} {label} key(s) [{_preview(keys)}]'
                 for label, keys in (('missing', report.missing),
                                     ('unexpected', report.unexpected)) if keys]
        raise CheckpointError(
            f'{filename} does not fit this {name}: {"; ".join(parts)}. Check arch/depths, or '
            f'pass strict=False in init_cfg to load the overlap')
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    print_log(f'{name}: loaded {len(report.loaded)}/{len(own)} tensors from {filename}',
              logger='current')
    if report.ignored:
        print_log(f'{name}: ignored classifier keys: {_preview(report.ignored)}',
                  logger='current')
    if report.kept_init:
        print_log(f'{name}: not in the checkpoint, kept their initialisation: '
                  f'{_preview(report.kept_init)}', logger='current')
    for label, keys in (('missing', report.missing), ('unexpected', report.unexpected)):
        if keys:
            print_log(f'{name}: {len(keys)} {label} key(s): {_preview(keys)}',
                      logger='current', level=30)
    return report
