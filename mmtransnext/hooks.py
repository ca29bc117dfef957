"""The two process-wide changes a run of this project may need, each as an mmengine hook that
applies it for the run only (``before_run`` to ``after_run``: weight initialisation, ``load_from``
/ ``resume`` and the compiled training steps happen in between).

The project's tools (``tools/train.py``, ``test.py``, ``demo.py``) add them to the runners they
build. With mmdet's, mmseg's or mmpretrain's own tools, add them to the config::

    custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)
    custom_hooks = [dict(type='CheckpointReaderHook'),       # runner checkpoints on torch >= 2.6
                    dict(type='EagerOptimizerUpdateHook')]   # only with compile=True

Importing :mod:`mmtransnext` applies neither; it only registers these classes.
"""
import contextlib

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .checkpoint import mmengine_loader
from .compile import optimizer_update_outside_compile


class _ScopedHook(Hook):
    """Holds a context manager open from ``before_run`` to ``after_run``."""

    priority = 'VERY_HIGH'  # before any other hook's before_run reads a checkpoint

    def _context(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def before_run(self, runner) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._context())

    def after_run(self, runner) -> None:
        stack = getattr(self, '_stack', None)
        if stack is not None:
            stack.close()
            self._stack = None


@HOOKS.register_module()
class CheckpointReaderHook(_ScopedHook):
    """For the run, mmengine reads local checkpoints and ``http(s)://`` URLs through
    :func:`mmtransnext.checkpoint.read_checkpoint`
    (:func:`~mmtransnext.checkpoint.mmengine_loader`): runner checkpoints (numpy numbers, ``HistoryBuffer``) that torch >= 2.6's weights-only
    ``torch.load`` refuses are read without unpickling arbitrary code, URLs are cached in torch
    hub's folder, and model weights holding NaN or inf are refused. Another model's checkpoint
    loads as it does without it (same keys, tensors and meta)."""

    def _context(self) -> contextlib.AbstractContextManager:
        return mmengine_loader()


@HOOKS.register_module()
class EagerOptimizerUpdateHook(_ScopedHook):
    """For the run, ``OptimWrapper.update_params`` runs outside ``torch.compile``
    (:func:`~mmtransnext.compile.optimizer_update_outside_compile`): with ``compile=True``, dynamo
    cannot trace the optimizer step of parameter groups built from a ``paramwise_cfg`` (see
    :mod:`mmtransnext.compile`). Without ``compile`` it changes nothing."""

    def _context(self) -> contextlib.AbstractContextManager:
        return optimizer_update_outside_compile()
