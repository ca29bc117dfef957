"""Checkpoint reading and loading: the one place the package touches ``torch.load``.

Every checkpoint, whoever asks for it, is read by :func:`read_checkpoint`: a local path, or an
``http://`` / ``https://`` URL, downloaded once into torch hub's checkpoint folder
(``torch.hub.get_dir()/checkpoints``, where mmengine and torchvision keep theirs) and then read
like a local file. The backbones' ``init_cfg=dict(type='Pretrained')`` call it directly.
Importing :mod:`mmtransnext` changes nothing in mmengine: what mmengine itself reads
(``load_from``, ``--resume``, ``mmengine.runner.load_checkpoint``, ``init_detector`` /
``init_model`` and the inferencers) goes through it only where it is installed as mmengine's
loader for local files and those two schemes (the other schemes, ``open-mmlab://``,
``torchvision://``, ``s3://``, ..., keep mmengine's loaders): for one block
(:func:`mmengine_loader`), for one run (:class:`mmtransnext.hooks.CheckpointReaderHook`, which
the project's tools add to every runner they build) or for the rest of the process
(:func:`install_mmengine_loader`). The reason to install it: mmengine 0.10 reads local files
with a bare ``torch.load``, which since torch 2.6 refuses mmengine's own runner checkpoints
(numpy numbers, ``HistoryBuffer``) unless told to unpickle them in full. Nothing in a file is
executed:

- a file of tensors only (official ImageNet / downstream weights) is read with
  ``torch.load(weights_only=True)``;
- a file holding more (runner checkpoints: numpy scalars and arrays in meta and message hub,
  mmengine's ``HistoryBuffer``, optimizer and scheduler state, dataset meta) is read with the
  restricted unpickler of :mod:`mmtransnext.safe_pickle`, which admits exactly those kinds of
  objects;
- a file that needs anything else is refused with an error naming the global, unless trust was
  given on purpose: :func:`trusted_checkpoints` or ``MMTRANSNEXT_TRUSTED_CHECKPOINTS=1``, which
  then unpickle that file in full.

The model weights of every checkpoint read (the floating-point tensors of its ``state_dict`` /
``model``, or of the file itself when it is a plain state dict) must be finite: a file with a NaN
or inf weight (a diverged run, a broken conversion) is refused with the tensors named, unless
asked for on purpose: ``allow_non_finite=True`` (:func:`read_checkpoint`, :func:`load_pretrained`,
a backbone's ``init_cfg``) or ``MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS=1`` (what reaches
``load_from`` / ``--resume``, which mmengine reads). Optimizer state, EMA copies and logged
values are not checked: they do not become the model's weights.
"""
import contextlib
import contextvars
import os
import os.path as osp
import pickle
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from . import safe_pickle

TRUSTED_ENV = 'MMTRANSNEXT_TRUSTED_CHECKPOINTS'
NON_FINITE_ENV = 'MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS'
#: URL schemes :func:`read_checkpoint` downloads.
URL_PREFIXES = ('http://', 'https://')
#: Seconds a download may wait for the server before it is given up.
DOWNLOAD_TIMEOUT = 60
_TRUSTED = contextvars.ContextVar('mmtransnext_trusted_checkpoints', default=False)
_NON_FINITE = contextvars.ContextVar('mmtransnext_non_finite_weights', default=False)

#: Keys of an ImageNet classifier that a backbone never has; dropped silently but reported,
#: as are those under the prefixes of the backbone family's ``official_classifier_keys``.
CLASSIFIER_PREFIXES = ('head.', 'fc.', 'classifier.')
#: Top-level keys of an mmpretrain classifier; a file with none of them is in the official layout.
_CLASSIFIER_PARTS = ('backbone.', 'neck.', 'head.fc.', 'data_preprocessor.')


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or does not fit the model."""


@contextlib.contextmanager
def trusted_checkpoints() -> Iterator[None]:
    """Allow full unpickling of local checkpoints read inside this block (trusted files only)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


@contextlib.contextmanager
def non_finite_weights_allowed() -> Iterator[None]:
    """Within the block, checkpoints whose weights hold NaN or inf are loaded (with a warning)
    instead of refused: what ``--allow-non-finite`` of tools/train.py and tools/test.py gives
    their whole run, mmengine's ``load_from`` / ``--resume`` included."""
    token = _NON_FINITE.set(True)
    try:
        yield
    finally:
        _NON_FINITE.reset(token)


def _trusted() -> bool:
    return _TRUSTED.get() or os.environ.get(TRUSTED_ENV, '') == '1'


def read_checkpoint(filename: str, map_location='cpu', allow_pickle: Optional[bool] = None,
                    allow_non_finite: Optional[bool] = None):
    """Read a local checkpoint file without executing anything from it (see the module doc)
    and check that its model weights are finite (:func:`check_finite`).

    Args:
        filename: path of the file, or an ``http(s)://`` URL (see :func:`cached_download`).
        map_location: as for :func:`torch.load`.
        allow_pickle: whether a file that the restricted unpickler refuses may be unpickled in
            full. None decides from :func:`trusted_checkpoints` and
            ``MMTRANSNEXT_TRUSTED_CHECKPOINTS``.
        allow_non_finite: load weights holding NaN or inf (reported as a warning) instead of
            refusing them. None decides from ``MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS``.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``filename`` is a directory.
        CheckpointError: not a checkpoint, (untrusted) it needs a global that is refused, a
            weight is not finite, or a URL could not be downloaded.
    """
    name = str(filename)
    if is_url(filename):
        filename = cached_download(filename)
        name = f'{name} (downloaded to {filename})'
    checkpoint = _read(filename, map_location, allow_pickle, name)
    if isinstance(checkpoint, dict):
        check_finite(extract_state_dict(checkpoint, prefix=''), name, allow_non_finite)
    return checkpoint


def is_url(filename) -> bool:
    """Whether :func:`read_checkpoint` downloads ``filename`` (an ``http(s)://`` URL)."""
    return isinstance(filename, str) and filename.startswith(URL_PREFIXES)


def cached_download(url: str, cache_dir: Optional[str] = None) -> str:
    """The local copy of the file at ``url``, downloaded the first time it is asked for.

    The copy is ``cache_dir/<the URL path's last part>`` (a query such as ``?download=true`` is
    not part of the name); ``cache_dir`` defaults to ``torch.hub.get_dir()/checkpoints``, where
    mmengine's and torch's own downloads go, so a file either of them fetched is reused. The
    download goes to a temporary file first: an interrupted one leaves nothing behind.

    Raises:
        CheckpointError: one line naming the URL and the HTTP status or network error, and how
            to use a local copy instead.
    """
    name = osp.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise CheckpointError(f'{url} names no file (the URL path ends with "/")')
    folder = cache_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    path = osp.join(folder, name)
    if osp.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    alternative = ('download it where the network allows and pass the local file in its place '
                   '(e.g. --cfg-options model.backbone.init_cfg.checkpoint=PATH), or put it at '
                   f'{path}')
    print_log(f'downloading {url} to {path}', logger='current')
    partial = tempfile.NamedTemporaryFile(dir=folder, prefix=f'.{name}.', delete=False)
    try:
        with partial, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            shutil.copyfileobj(response, partial)
        os.replace(partial.name, path)
    except urllib.error.HTTPError as err:
        raise CheckpointError(f'cannot download {url}: HTTP {err.code} {err.reason}; '
                              f'{alternative}') from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, 'reason', err)
        raise CheckpointError(f'cannot download {url}: {reason} (no network?); '
                              f'{alternative}') from err
    finally:
        if osp.exists(partial.name):
            os.unlink(partial.name)
    return path


def _read(filename: str, map_location, allow_pickle: Optional[bool], name: str):
    """Read the local file ``filename``; messages call it ``name``."""
    path = osp.expanduser(str(filename))
    if osp.isdir(path):
        raise IsADirectoryError(f'checkpoint path is a directory, not a file: {name}')
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {name}')
    if _is_torchscript_archive(path):
        raise CheckpointError(f'{name} is a TorchScript archive, not a checkpoint: load it '
                              'with torch.jit.load if you trust it')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # more than tensors: the restricted unpickler below reads what it can
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f'{name} is not a readable PyTorch checkpoint: {err}') from err
    try:
        return torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=safe_pickle)
    except safe_pickle.RefusedGlobal as err:
        refused = err
    except Exception as err:
        raise CheckpointError(f'{name} is not a readable PyTorch checkpoint: {err}') from err
    if not (_trusted() if allow_pickle is None else allow_pickle):
        raise CheckpointError(
            f'{name} was not loaded: it needs {refused}. Checkpoints are read without '
            f'running code from them, which admits tensors, Python containers and numbers, numpy '
            f'numeric arrays and mmengine\'s plain-data classes; anything else could run code when '
            f'unpickled (or is a class this version does not know). If you trust this file, '
            f'load it inside mmtransnext.checkpoint.trusted_checkpoints() or set {TRUSTED_ENV}=1.'
        ) from refused
    print_log(f'{name}: unpickled in full (trusted) because it needs {refused.name}',
              logger='current', level=30)
    return torch.load(path, map_location=map_location, weights_only=False)


def _is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``constants.pkl``): torch 2.1's
    ``torch.load`` hands one to ``torch.jit.load`` even with ``weights_only=True`` (newer torch
    refuses it)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(osp.basename(name) == 'constants.pkl' for name in archive.namelist())


def non_finite_tensors(state: Dict[str, torch.Tensor]) -> Dict[str, Tuple[int, int, int]]:
    """``{name: (NaN count, inf count, size)}`` of the floating-point tensors of ``state``
    that hold a NaN or an infinity."""
    found = {}
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue  # integer buffers (counters, indices) cannot be NaN
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        found[name] = (nan, tensor.numel() - int(finite.sum()) - nan, tensor.numel())
    return found


def check_finite(state: Dict[str, torch.Tensor], filename: str,
                 allow_non_finite: Optional[bool] = None) -> None:
    """Refuse (or, allowed, warn about) weights of ``state`` that hold NaN or inf.

    Args:
        state: the weights (e.g. from :func:`extract_state_dict`).
        filename: the file they come from, for the message.
        allow_non_finite: warn instead of raising. None decides from
            ``MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS=1``.

    Raises:
        CheckpointError: a tensor is not finite and that was not allowed.
    """
    found = non_finite_tensors(state)
    if not found:
        return
    parts = []
    for name, (nan, inf, size) in found.items():
        kinds = ', '.join(f'{n} {label}' for n, label in ((nan, 'NaN'), (inf, 'inf')) if n)
        parts.append(f'{name} ({kinds} of {size})')
    summary = (f'{filename}: {len(found)} of {len(state)} weight tensors hold non-finite '
               f'values: {_preview(parts, 4)}')
    if allow_non_finite is None:
        allow_non_finite = _NON_FINITE.get() or os.environ.get(NON_FINITE_ENV, '') == '1'
    if allow_non_finite:
        print_log(f'{summary} (loaded anyway: non-finite weights allowed)', logger='current',
                  level=30)
        return
    raise CheckpointError(
        f'{summary}. Such weights make every output NaN (a diverged run or a broken file?). '
        f'To load it anyway pass allow_non_finite=True (read_checkpoint / load_pretrained / '
        f'the backbone\'s init_cfg), --allow-non-finite to tools/train.py or tools/test.py, '
        f'or set {NON_FINITE_ENV}=1.')


def load_from_mmtransnext(filename: str, map_location=None, logger=None):
    """mmengine ``CheckpointLoader`` backend for local files and ``http(s)://`` URLs (mmengine
    hands its URL loaders a ``logger`` too; its log names the backend after ``load_from_``)."""
    return read_checkpoint(filename, map_location)


#: The mmengine ``CheckpointLoader`` prefixes :func:`read_checkpoint` serves: local files and URLs.
MMENGINE_SCHEMES = ('',) + URL_PREFIXES


def install_mmengine_loader() -> None:
    """Make mmengine read local checkpoints and ``http(s)://`` URLs through
    :func:`read_checkpoint` for the rest of the process (idempotent). For code that calls
    ``load_checkpoint``, ``init_detector`` or an inferencer itself; a run is better served by
    :class:`mmtransnext.hooks.CheckpointReaderHook` and a block by :func:`mmengine_loader`."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=MMENGINE_SCHEMES, loader=load_from_mmtransnext,
                                     force=True)


@contextlib.contextmanager
def mmengine_loader() -> Iterator[None]:
    """Within the block, mmengine reads local checkpoints and ``http(s)://`` URLs through
    :func:`read_checkpoint`; mmengine's previous loaders for them come back afterwards (unless
    something else replaced ours in the meantime). Nested and process-wide installs are fine."""
    from mmengine.runner.checkpoint import CheckpointLoader
    previous = {prefix: CheckpointLoader._schemes.get(prefix) for prefix in MMENGINE_SCHEMES}
    install_mmengine_loader()
    try:
        yield
    finally:
        for prefix, loader in previous.items():
            if loader is not None and CheckpointLoader._schemes.get(prefix) is \
                    load_from_mmtransnext:
                CheckpointLoader.register_scheme(prefixes=prefix, loader=loader, force=True)


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
    more = f' and {len(keys) - most} more' if len(keys) > most else ''
    return ', '.join(keys[:most]) + more


def load_pretrained(model: nn.Module, filename: str, prefix: Optional[str] = None,
                    map_location='cpu', strict: bool = True,
                    optional: Sequence[str] = (),
                    allow_non_finite: Optional[bool] = None) -> LoadReport:
    """Load official weights (ImageNet or mmdet/mmseg files) into the backbone ``model``.

    Reads with :func:`read_checkpoint` (nothing in the file is executed), drops the classifier
    head, and logs loaded / missing / unexpected keys. Raises :class:`CheckpointError` when no
    key matches, when a shape differs (a different arch), or, with ``strict``, when keys are
    missing or left over. Missing keys that start with one of ``optional`` (parts a pretraining
    file legitimately lacks, e.g. output norms added for dense prediction) keep their
    initialisation and are reported, not refused. Weights holding NaN or inf are refused
    unless ``allow_non_finite`` (see :func:`check_finite`).
    """
    checkpoint = read_checkpoint(filename, map_location, allow_non_finite=allow_non_finite)
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
        elif key.startswith(CLASSIFIER_PREFIXES + tuple(official_classifier_keys(model))):
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


def official_classifier_keys(backbone: Optional[nn.Module]) -> Dict[str, str]:
    """Where the official ImageNet classifiers of ``backbone``'s family keep the tensors a
    backbone lacks, key prefix in the file -> key prefix in
    :class:`~mmtransnext.models.classifiers.OfficialImageClassifier`: the family contract's
    ``official_classifier_keys`` (read from the backbone: the families import this module);
    empty for another backbone."""
    return dict(getattr(backbone, 'official_classifier_keys', None) or {})


def convert_official_classifier(state: Dict[str, torch.Tensor], model: nn.Module,
                                prefix: str = '') -> bool:
    """Rewrite, in place, an official ImageNet classifier's weights in ``state`` into the layout
    of ``model``, an mmpretrain classifier whose backbone's family has official classifier
    files (:func:`official_classifier_keys`; every other key of such a file is the
    backbone's, unchanged), and check that they fit it exactly.

    ``state`` is what mmengine hands to ``load_state_dict``: the file's ``state_dict``, or (for
    the official TransNeXt files, ``{'model': ...}``) the whole file, which is unwrapped here.
    Keys under ``prefix`` only are considered. A state already in mmpretrain's layout (a key
    under ``backbone.``, ``neck.`` or ``head.fc.``) is left alone.

    Returns:
        whether ``state`` was converted.

    Raises:
        CheckpointError: an official file that does not fit ``model`` exactly (another arch or
            number of classes): missing, unexpected or differently shaped tensors, named.
    """
    wrapped = state.get(prefix + 'model')
    if isinstance(wrapped, dict) and not any(
            k.startswith(prefix) and k != prefix + 'model' and isinstance(v, torch.Tensor)
            for k, v in state.items()):
        del state[prefix + 'model']
        state.update({prefix + (k[len('module.'):] if k.startswith('module.') else k): v
                      for k, v in wrapped.items() if isinstance(v, torch.Tensor)})
    backbone = getattr(model, 'backbone', None)
    family = type(backbone).__name__
    renames = official_classifier_keys(backbone)
    keys = [k for k in state if k.startswith(prefix)]
    if not renames or not keys or any(
            k[len(prefix):].startswith(_CLASSIFIER_PARTS) for k in keys):
        return False
    own = model.state_dict()
    converted = {}
    for key in keys:
        name = key[len(prefix):]
        old = next((o for o in renames if name.startswith(o)), None)
        new = renames[old] + name[len(old):] if old else 'backbone.' + name
        value = state.pop(key)
        if new in own and value.dim() == 4 and own[new].dim() == 2 and \
                value.shape[2:] == (1, 1):
            value = value.flatten(1)  # the official 1x1 conv classifier as a linear layer
        converted[new] = value
    missing = [k for k in own if k not in converted]
    unexpected = [k for k in converted if k not in own]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in converted.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f'{len(found)} {label} [{_preview(found, 4)}]'
                 for label, found in (('missing key(s)', missing),
                                      ('unexpected key(s)', unexpected),
                                      ('shape mismatch(es)', mismatched)) if found]
        raise CheckpointError(
            f'the official {family} ImageNet checkpoint does not fit this classifier: '
            f'{"; ".join(parts)}. Check arch and head.num_classes; to fine-tune its backbone '
            f'with another head, load it through the backbone\'s '
            f'init_cfg=dict(type=\'Pretrained\', checkpoint=...) instead')
    state.update({prefix + k: v for k, v in converted.items()})
    print_log(f'{type(model).__name__}: converted the official {family} ImageNet classifier '
              f'({len(converted)} tensors; {", ".join(f"{o}* -> {n}*" for o, n in renames.items())}'
              f', the rest under backbone.)', logger='current')
    return True
