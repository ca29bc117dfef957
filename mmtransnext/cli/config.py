"""Loading a config of mmdet, mmseg or mmpretrain (the library is its ``default_scope``) and
the parts of it the tools read or set."""
import importlib
import os.path as osp
from typing import Optional

from .errors import ToolError, one_line
from .paths import check_file

#: Libraries a config can belong to (its ``default_scope``).
LIBRARIES = ('mmdet', 'mmseg', 'mmpretrain')


def load_config(path: str, cfg_options: Optional[dict] = None):
    """Read a config file (after checking it exists), merge ``--cfg-options``, set the scope.

    Returns:
        The :class:`mmengine.Config`; ``custom_imports`` (e.g. ``mmtransnext``) are imported.
    """
    path = resolve_config_path(path)
    check_file(path, 'config file')
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(path)
    except Exception as err:  # a config is Python: anything can go wrong while it runs
        raise ToolError(f'config file {path} cannot be read: {type(err).__name__}: '
                        f'{one_line(err)}') from err
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


def backbone_config(cfg, config_path: str) -> dict:
    """The backbone part of a config's model: ``model.backbone`` of a detector / segmentor
    (inside a TTA wrapper too), or ``model`` itself when it is a backbone config."""
    model = cfg.get('model')
    if not isinstance(model, dict):
        raise ToolError(f'{config_path} defines no model')
    if is_tta_model(model):
        model = model['module']
    return model['backbone'] if 'backbone' in model else model


def apply_fixed_pool_size(cfg, value: Optional[int], config_path: str) -> None:
    """Set the backbone's ``fixed_pool_size`` to ``value`` (nothing when None); a ToolError
    when the config's backbone is not a family whose constructor takes it."""
    if value is None:
        return
    import inspect

    from ..models.backbones import families
    backbone = backbone_config(cfg, config_path)
    kind = backbone.get('type')
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', repr(kind))
    takers = [family for family, cls in families().items()
              if 'fixed_pool_size' in inspect.signature(cls.__init__).parameters]
    if name.split('.')[-1] not in takers:
        raise ToolError(f'--fixed-pool-size: the backbone of {config_path} is {name}; '
                        f'linear inference mode is a setting of {", ".join(takers)}')
    backbone['fixed_pool_size'] = value
