"""What mmengine's ``compile=True`` compiles, and the one change it needs for this project's
configs.

mmengine 0.10's Runner compiles ``model.train_step`` (``torch.compile(model.train_step,
**cfg.compile)``) before training; validation and testing stay eager. A ``train_step`` is the
data preprocessor, the forward with the losses and ``optim_wrapper.update_params`` (backward,
gradient clipping, optimizer step, zero grad). Traced as a whole this fails for every config with
a ``paramwise_cfg`` (all TransNeXt and TransXNet recipes, the classification ones included):
mmengine's optimizer constructor builds the parameter groups inside a ``ConfigDict``, so each
group is a ``ConfigDict`` (a ``dict`` subclass), and dynamo's optimizer support (torch 2.14)
assumes plain dicts when it marks the groups capturable -- ``InternalTorchDynamoError:
AttributeError: 'UserDefinedDictVariable' object has no attribute 'items'`` at
``for group in self.param_groups`` of the optimizer's ``step``.

:func:`optimizer_update_outside_compile` keeps ``OptimWrapper.update_params`` out of dynamo
(``torch.compiler.disable``) within a block, and
:class:`mmtransnext.hooks.EagerOptimizerUpdateHook` for one run: the project's tools add that hook
to a runner whose config sets ``compile``; with mmdet's, mmseg's or mmpretrain's own tools, add it
to the config (``custom_hooks = [dict(type='EagerOptimizerUpdateHook')]``). Importing mmtransnext
leaves the wrapper alone. Under ``compile=True`` the preprocessing, the forward and the
losses are compiled (their backward by AOTAutograd), backward runs that compiled graph, and the
gradient clipping and optimizer step run eagerly -- what the official TransNeXt scripts compile
(``torch.compile(model)``). Without dynamo the wrapper changes nothing. The same holds for every
task: classification (mmpretrain), detection (mmdet) and segmentation (mmseg) configs.

Graph breaks that remain in a compiled ``train_step`` (each splits the step into more graphs,
none changes the numbers): mmengine's ``stack_batch`` in the data preprocessors; the detection
heads' target assignment and sampling and mmseg's accuracy in the losses (data-dependent
shapes); the first call of a TransNeXt at a new input
size, which builds its position tables on the host (``torch.unique``). The backbones themselves
trace to one graph once their tables exist, with gradients too, on every attention backend
(tests/test_models/test_backbones/test_compile.py).
"""
import contextlib
from typing import Iterator

import torch

_MARK = '_mmtransnext_outside_dynamo'


def register_compile_rules() -> None:
    """Run ``mmengine``'s ``OptimWrapper.update_params`` outside ``torch.compile`` for the rest
    of the process (idempotent); :func:`optimizer_update_outside_compile` does it for a block."""
    from mmengine.optim import OptimWrapper
    update = OptimWrapper.update_params
    if getattr(update, _MARK, False):
        return
    update = torch.compiler.disable(update, recursive=True)
    setattr(update, _MARK, True)
    OptimWrapper.update_params = update


@contextlib.contextmanager
def optimizer_update_outside_compile() -> Iterator[None]:
    """Within the block, ``OptimWrapper.update_params`` runs outside ``torch.compile``; the
    method it replaced comes back afterwards (nested and process-wide uses are fine)."""
    from mmengine.optim import OptimWrapper
    previous = OptimWrapper.__dict__['update_params']
    register_compile_rules()
    try:
        yield
    finally:
        if OptimWrapper.__dict__['update_params'] is not previous and \
                getattr(OptimWrapper.__dict__['update_params'], _MARK, False):
            OptimWrapper.update_params = previous
