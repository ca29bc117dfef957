"""Running a tool's ``main``: the one-line error report, and distributed runs without CUDA
(gloo, CPU DistributedDataParallel, Slurm's task variables)."""
import os
import sys
from typing import Any, Callable, List

import torch

from ..checkpoint import CheckpointError
from .errors import ToolError


def run_main(main: Callable[[], Any]) -> Any:
    """Call ``main()`` and return what it returns; report :class:`ToolError` / checkpoint
    errors as one ``error: ...`` line and exit 1 (argparse's own errors exit 2)."""
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
