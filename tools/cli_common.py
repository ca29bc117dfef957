"""Set-up shared by tools/train.py, test.py, demo.py and analysis/get_flops.py.

One entry point serves mmdet, mmseg and mmpretrain configs: the library is the config's
``default_scope``.
Everything a run needs from the file system (config, dataset files, pretrained and runner
checkpoints) is checked before the Runner starts, so a missing or wrong file is reported by name
instead of by a traceback from deep inside the Runner. Generated datasets
(:mod:`mmtransnext.datasets`) are written on first use. On a machine without CUDA, training
falls back from AMP to fp32 and distributed runs use gloo with a CPU model wrapper.
"""
import argparse
import importlib
import os
import os.path as osp
import sys
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch

#: Libraries a config can belong to (its ``default_scope``).
LIBRARIES = ('mmdet', 'mmseg', 'mmpretrain')
#: Checkpoint locations that mmengine's own loaders resolve (local files and ``http(s)://`` URLs
#: are read by :func:`mmtransnext.checkpoint.read_checkpoint`, installed by :func:`build_runner`).
MMENGINE_PREFIXES = ('torchvision://', 'open-mmlab://', 'mmcls://', 'pavi://', 's3://',
                     'openmmlab://', 'modelzoo://')
#: Dataset paths relative to ``data_root`` (besides ``ann_file``).
PATH_KEYS = ('img', 'img_path', 'seg_map_path', 'seg', 'ann')


class ToolError(RuntimeError):
    """A problem the user can fix (missing file, wrong option); printed without a traceback."""


def run_main(main) -> Any:
    """Call ``main()`` and return what it returns; report :class:`ToolError` / checkpoint
    errors as one ``error: ...`` line and exit 1 (argparse's own errors exit 2)."""
    from mmtransnext.checkpoint import CheckpointError
    try:
        return main()
    except (ToolError, CheckpointError) as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(1)
    finally:
        close_distributed()


def close_distributed() -> None:
    """Destroy the process group before the interpreter exits.

    Left to interpreter teardown, gloo's worker threads can be destroyed while still joinable
    ("terminate called without an active exception", SIGABRT in one rank after a finished run).
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------- config
def load_config(path: str, cfg_options: Optional[dict] = None):
    """Read a config file (after checking it exists), merge ``--cfg-options``, set the scope.

    Returns:
        The :class:`mmengine.Config`; ``custom_imports`` (e.g. ``mmtransnext``) are imported.
    """
    path = resolve_config_path(path)
    check_file(path, 'config file')
    import mmtransnext  # noqa: F401  (checkpoint loader for runner checkpoints)
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(path)
    except Exception as err:  # a config is Python: anything can go wrong while it runs
        raise ToolError(f'config file {path} cannot be read: {type(err).__name__}: '
                        f'{_one_line(err)}') from err
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    library = library_of(cfg, path)
    try:
        importlib.import_module(library)
    except ImportError as err:
        raise ToolError(f'{path} is an {library} config but {library} cannot be imported: '
                        f'{err}') from err
    from mmengine.registry import init_default_scope
    init_default_scope(library)
    return cfg


def resolve_config_path(path: str) -> str:
    """A config path; ``mmdet::swin/...`` / ``mmseg::...`` name a config of that installed
    library (as in ``_base_``) and become the file's path."""
    if '::' not in path:
        return path
    package, relative = path.split('::', 1)
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ToolError(f'{path}: {package} cannot be imported: {err}') from err
    root = osp.dirname(module.__file__)
    for folder in (osp.join(root, '.mim', 'configs'), osp.join(osp.dirname(root), 'configs')):
        if osp.isfile(osp.join(folder, relative)):
            return osp.join(folder, relative)
    raise ToolError(f'config file not found: {path} (looked in {package}\'s .mim/configs)')


def library_of(cfg, path: str = 'the config') -> str:
    """'mmdet', 'mmseg' or 'mmpretrain', from the config's ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in LIBRARIES:
        raise ToolError(f'{path} has default_scope={scope!r}; these tools run the configs of '
                        f'{", ".join(LIBRARIES)}, which inherit it from their base')
    return scope


def is_tta_model(model_cfg: dict) -> bool:
    """Whether a model config is a test-time-augmentation wrapper (evaluation only)."""
    return str(model_cfg.get('type', '')).endswith('TTAModel')


def default_work_dir(config_path: str) -> str:
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


# --------------------------------------------------------------------------------- device
def adapt_to_device(cfg, distributed: bool) -> List[str]:
    """Make a GPU recipe runnable without CUDA; returns what was changed (for the log).

    - ``AmpOptimWrapper`` (mmengine supports it on accelerators only) becomes ``OptimWrapper``.
    - distributed: gloo instead of nccl, a DDP wrapper without ``device_ids``, and SyncBN
      (which needs a GPU) replaced by BN; single-process runs revert SyncBN in mmengine.
    """
    if torch.cuda.is_available():
        return []
    notes = []
    optim = cfg.get('optim_wrapper')
    if optim is not None and optim.get('type') == 'AmpOptimWrapper':
        optim.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            optim.pop(key, None)
        notes.append('no CUDA: AmpOptimWrapper -> OptimWrapper (fp32 training)')
    if distributed:
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        wrapper = dict(cfg.get('model_wrapper_cfg') or {})
        if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
            wrapper['type'] = 'CPUDistributedDataParallel'
            wrapper.setdefault('broadcast_buffers', False)
            wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
            cfg.model_wrapper_cfg = wrapper
        if _replace_type(cfg.model, 'SyncBN', 'BN'):
            notes.append('no CUDA: SyncBN -> BN')
        notes.append('no CUDA: distributed backend gloo, CPU DistributedDataParallel')
    return notes


def _replace_type(node: Any, old: str, new: str) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += _replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_type(value, old, new)
    return count


def init_distributed(launcher: str, cfg) -> None:
    """Start the process group for ``launcher`` when mmengine cannot (no CUDA).

    mmengine's ``init_dist`` calls ``torch.cuda.set_device``, which a CPU-only torch lacks, so
    on CPU the group is created here (gloo) and the Runner uses it.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if launcher == 'slurm':
        slurm_environment()
    elif launcher != 'pytorch':
        raise ToolError(f'--launcher {launcher} without CUDA is not supported; use torchrun '
                        f'(tools/dist_train.sh) with --launcher pytorch, or srun '
                        f'(tools/slurm_train.sh) with --launcher slurm')
    if not dist.is_initialized():
        import datetime
        timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout', 1800)
        dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=timeout))
    _register_cpu_ddp()


def first_slurm_node(node_list: str) -> str:
    """First host of a Slurm node list (``SLURM_NODELIST``), e.g. ``gpu[07-09,12],cpu3`` ->
    ``gpu07``: ``scontrol show hostname`` where Slurm's tools are installed, else parsed."""
    import shutil
    import subprocess
    if shutil.which('scontrol'):
        out = subprocess.run(['scontrol', 'show', 'hostname', node_list], capture_output=True,
                             text=True, check=False).stdout.split()
        if out:
            return out[0]
    head = node_list.strip()
    depth = 0
    for i, char in enumerate(head):  # the first entry ends at a comma outside brackets
        depth += {'[': 1, ']': -1}.get(char, 0)
        if char == ',' and depth == 0:
            head = head[:i]
            break
    if '[' not in head:
        return head
    prefix, ranges = head.split('[', 1)
    return prefix + ranges.rstrip(']').split(',')[0].split('-')[0]


def slurm_environment() -> None:
    """Set torch.distributed's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` from the variables srun gives each task, as mmengine's slurm launcher does
    (which a CUDA machine uses instead: it also selects the task's GPU)."""
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST') if k not in os.environ]
    if missing:
        raise ToolError(f'--launcher slurm outside a Slurm task ({", ".join(missing)} not set): '
                        f'start it with srun, e.g. tools/slurm_train.sh')
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = first_slurm_node(os.environ['SLURM_NODELIST'])


def _register_cpu_ddp() -> None:
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS
    if 'CPUDistributedDataParallel' in MODEL_WRAPPERS.module_dict:
        return

    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """``MMDistributedDataParallel`` for CPU modules: DDP refuses ``device_ids`` there."""

        def __init__(self, module, device_ids=None, **kwargs) -> None:
            super().__init__(module=module, device_ids=None, **kwargs)

    MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel)


# --------------------------------------------------------------------------------- files
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
    from mmtransnext.checkpoint import CheckpointError, cached_download, is_url
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


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (mmengine's syntax errors span several)."""
    return ' '.join(str(err).split())


def check_file(path: str, what: str) -> None:
    """Raise :class:`ToolError` naming ``what`` unless ``path`` is a readable file."""
    if osp.isdir(path):
        raise ToolError(f'{what} is a directory, not a file: {path}')
    if not osp.isfile(path):
        hint = '' if osp.isabs(path) else f' (relative to the current directory {os.getcwd()})'
        raise ToolError(f'{what} not found: {path}{hint}')
    if not os.access(path, os.R_OK):
        raise ToolError(f'{what} is not readable (permissions): {path}')


def _file_in_the_way(folder: str) -> Optional[str]:
    """The file that stops ``folder`` from being (or becoming) a directory, if any: ``folder``
    itself or its nearest existing parent."""
    existing = osp.abspath(folder)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    return None if osp.isdir(existing) else existing


def check_output_dir(path: Optional[str], what: str) -> None:
    """Raise unless ``path`` is a directory or can become one (no file in the way). Nothing is
    created: that waits until every argument is valid."""
    blocker = path and _file_in_the_way(path)
    if blocker:
        raise ToolError(f'{what} {path} is not a directory: {blocker} is a file')


def check_output_file(path: str, what: str) -> None:
    """Raise unless ``path`` can be written as a file: not a directory, and no file stands
    where its folder should be."""
    if osp.isdir(path):
        raise ToolError(f'{what} {path} is a directory; give a file name')
    blocker = _file_in_the_way(osp.dirname(osp.abspath(path)))
    if blocker:
        raise ToolError(f'{what} {path}: cannot write there, {blocker} is a file')


def add_non_finite_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-non-finite`` (tools/train.py and tools/test.py): see :func:`allow_non_finite`."""
    parser.add_argument('--allow-non-finite', action='store_true',
                        help='load checkpoints whose weights hold NaN or inf (each reported as '
                        'a warning) instead of refusing them')


def allow_non_finite(enabled: bool) -> None:
    """With ``enabled``, every checkpoint this process reads (the tool's own checks, and what
    mmengine loads: ``load_from``, ``--resume``, init_cfg) may hold non-finite weights: the
    switch mmengine's loaders see is the environment variable, set here."""
    if enabled:
        from mmtransnext.checkpoint import NON_FINITE_ENV
        os.environ[NON_FINITE_ENV] = '1'


def read_checkpoint_arg(path: str, what: str) -> dict:
    """A checkpoint named by an option, read (without executing it) and checked to hold finite
    weights before anything is written; errors name ``what``."""
    from mmtransnext.checkpoint import CheckpointError, is_url, read_checkpoint
    if not is_url(path):
        check_file(path, what)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as err:
        raise ToolError(f'{what}: {err}') from err
    if not isinstance(checkpoint, dict):
        raise ToolError(f'{what} {path} holds a {type(checkpoint).__name__}, not a checkpoint')
    return checkpoint


def key_value(text: str) -> str:
    """An argparse type: a ``KEY=VALUE`` config override, kept as text (to be handed on to
    another tool's ``--cfg-options``; :func:`cfg_options_dict` parses it)."""
    if '=' not in text or text.startswith('='):
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    return text


def cfg_options_dict(items: Sequence[str]) -> dict:
    """``KEY=VALUE`` overrides as ``--cfg-options`` parses them (mmengine's ``DictAction``)."""
    from mmengine.config import DictAction
    namespace = argparse.Namespace()
    DictAction(option_strings=['--cfg-options'], dest='options')(None, namespace, list(items))
    return getattr(namespace, 'options', None) or {}


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type``: an integer >= 0 (indices, counts that may be zero)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse ``type``: a number > 0."""
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value


def image_size(text: str) -> Tuple[int, int]:
    """argparse ``type``: ``HxW`` (or one size for both) as positive ``(height, width)``."""
    import argparse
    height, _, width = text.lower().partition('x')
    try:
        size = int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW or one size, got {text!r}') from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f'sizes must be >= 1, got {text!r}')
    return size


def _int_at_least(text: str, least: int) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None
    if value < least:
        raise argparse.ArgumentTypeError(f'must be >= {least}, got {value}')
    return value


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
    from mmtransnext.checkpoint import convert_official_classifier, extract_state_dict
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


# --------------------------------------------------------------------------------- runner
def build_runner(cfg):
    """``Runner.from_cfg`` with the config's own runner type when it names one, reading
    checkpoints through :mod:`mmtransnext.checkpoint` and, under ``compile``, keeping the
    optimizer update out of dynamo, for its runs (:mod:`mmtransnext.hooks`)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmtransnext.hooks import CheckpointReaderHook, EagerOptimizerUpdateHook
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.register_hook(CheckpointReaderHook())  # load_from, --resume: runner checkpoints
    if cfg.get('compile'):
        runner.register_hook(EagerOptimizerUpdateHook())  # paramwise_cfg groups under dynamo
    return runner


# --------------------------------------------------------------------------------- backbone
#: Normalisation when a config has no ``data_preprocessor`` (ImageNet, RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def split_models(paths: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """``CONFIG [CHECKPOINT] [CONFIG [CHECKPOINT] ...]`` as (config, checkpoint or None) pairs:
    a ``.py`` file (or ``mmdet::``/``mmseg::`` path) starts a model, another path is the
    checkpoint of the model before it."""
    models: List[Tuple[str, Optional[str]]] = []
    for path in paths:
        if path.endswith('.py') or '::' in path:
            models.append((path, None))
        elif not models:
            raise ToolError(f'{path} is not a config (.py): give CONFIG [CHECKPOINT] ...')
        elif models[-1][1] is not None:
            raise ToolError(f'{path}: {models[-1][0]} already has the checkpoint '
                            f'{models[-1][1]}; configs end in .py')
        else:
            models[-1] = (models[-1][0], path)
    if not models:
        raise ToolError('no config given')
    return models


def backbone_config(cfg, config_path: str) -> dict:
    """The backbone part of a config's model: ``model.backbone`` of a detector / segmentor
    (inside a TTA wrapper too), or ``model`` itself when it is a backbone config."""
    model = cfg.get('model')
    if not isinstance(model, dict):
        raise ToolError(f'{config_path} defines no model')
    if is_tta_model(model):
        model = model['module']
    return model['backbone'] if 'backbone' in model else model


def _accepts(cls: type, name: str) -> bool:
    import inspect
    params = inspect.signature(cls).parameters.values()
    return any(p.name == name or p.kind == p.VAR_KEYWORD for p in params)


def build_backbone(cfg, config_path: str, checkpoint: Optional[str] = None,
                   stage: Optional[int] = None) -> Tuple[torch.nn.Module, int]:
    """Build a config's backbone in eval mode, with ``checkpoint``'s weights if given.

    Args:
        cfg, config_path: the loaded config and its path (for messages).
        checkpoint: a runner checkpoint of the config's model (its ``backbone.`` weights are
            used) or a backbone checkpoint (e.g. official ImageNet weights); must fit exactly.
        stage: when set, the backbone is built to return that stage's map (``out_indices``)
            if its class takes ``out_indices``.

    Returns:
        The backbone and the index of ``stage``'s map among its outputs.
    """
    import copy
    from mmengine.registry import MODELS
    from mmtransnext.checkpoint import CheckpointError, is_url, load_pretrained
    backbone_cfg = copy.deepcopy(dict(backbone_config(cfg, config_path)))
    backbone_cfg.pop('init_cfg', None)  # weights come from `checkpoint` or stay random
    backbone_cfg.pop('pretrained', None)
    output = stage
    if stage is not None:
        kind = backbone_cfg.get('type')
        if isinstance(kind, str):
            with MODELS.switch_scope_and_registry(None) as registry:  # the default scope's
                kind = registry.get(kind)
        if kind is not None and _accepts(kind, 'out_indices'):
            backbone_cfg['out_indices'] = (stage, )
            output = 0
    try:
        backbone = MODELS.build(backbone_cfg)
    except (KeyError, TypeError, ValueError) as err:
        # out_indices=(stage,) is the one argument added here, so a refusal may be --stage's
        option = f'--stage {stage}: ' if stage is not None else ''
        raise ToolError(f'{option}{config_path}: cannot build its backbone '
                        f'{backbone_cfg.get("type")!r}: {_one_line(err)}') from err
    if checkpoint:
        if not is_url(checkpoint):
            check_file(checkpoint, 'checkpoint file')
        try:
            load_pretrained(backbone, checkpoint,
                            optional=getattr(backbone, 'pretrained_optional_keys', ()))
        except CheckpointError as err:
            raise ToolError(f'checkpoint file: {err}') from err
    backbone.eval()  # some backbones' train() returns None, so not chained
    return backbone, output


def input_normalization(cfg) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Mean and std (per channel, in the model's channel order) of the config's
    ``data_preprocessor``, and whether the model takes RGB (else BGR) images."""
    model = cfg.get('model') or {}
    if is_tta_model(model):
        model = model.get('module', {})
    pre = model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = pre.get('mean', IMAGENET_MEAN)
    std = pre.get('std', IMAGENET_STD)
    rgb = bool(pre.get('bgr_to_rgb', 'mean' not in pre)) and not pre.get('rgb_to_bgr', False)
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), rgb)


def image_tensor(image_rgb, cfg) -> torch.Tensor:
    """An RGB uint8 ``(H, W, 3)`` array as the config's model input ``(1, 3, H, W)``."""
    mean, std, rgb = input_normalization(cfg)
    array = image_rgb if rgb else image_rgb[..., ::-1]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float()
    return (tensor - mean) / std


def read_image(path: str, size: Optional[Sequence[int]] = None):
    """An image file as an RGB uint8 array, resized to ``size`` (H, W) if given."""
    import cv2
    check_file(path, 'image file')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ToolError(f'not a readable image: {path}')
    return resize_image(image[..., ::-1], size)


def resize_image(image_rgb, size: Optional[Sequence[int]]):
    """``image_rgb`` resized (bilinear) to ``size`` (H, W); unchanged when ``size`` is None."""
    import cv2
    if size is None or tuple(size) == image_rgb.shape[:2]:
        return image_rgb
    return cv2.resize(image_rgb, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def demo_image(index: int, size: Optional[Sequence[int]] = None):
    """Validation image ``index`` of the bundled demo data (generated in memory)."""
    from mmtransnext.datasets.synthetic import ShapesSpec, make_scene
    return resize_image(make_scene(ShapesSpec(), 'val', index)[0], size)


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG of at most 256 colours (a few times smaller than
    full colour, with no visible change for plots) and close it."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert('RGB')
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
