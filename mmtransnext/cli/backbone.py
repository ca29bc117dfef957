"""A config's backbone alone, for the analysis tools."""
from typing import List, Optional, Sequence, Tuple

import torch

from ..checkpoint import CheckpointError, is_url, load_pretrained
from .config import backbone_config
from .errors import ToolError, one_line
from .paths import check_file


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
                        f'{backbone_cfg.get("type")!r}: {one_line(err)}') from err
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
