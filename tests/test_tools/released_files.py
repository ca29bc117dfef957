"""Files in the layout and ``meta`` of the four stacks the official COCO / ADE20K weights were
released from, written from a model's weights (test-side writers: nothing here comes from the
package). What each stack writes, from its sources:

- mmdet 2.28 / mmseg 0.30 on the mmcv 1.7 runner (TransNeXt Mask R-CNN and UperNet, TransXNet Mask
  R-CNN, RetinaNet and Semantic FPN): ``mmcv.runner.save_checkpoint`` writes ``meta``,
  ``state_dict`` (an OrderedDict with ``_metadata``) and ``optimizer``; ``meta`` is the training
  script's (``env_info``, ``config`` as text, ``seed``, ``exp_name``), the CheckpointHook's
  (``mmdet_version`` + ``CLASSES``, a tuple; mmseg adds ``config`` and ``PALETTE``, a list of
  lists), the runner's (``epoch``, ``iter``, ``hook_msgs``: ``last_ckpt``, and with
  ``save_best``, as TransXNet's Semantic FPN evaluates, mmseg's ``best_score``, a numpy float64,
  and ``best_ckpt``), then
  ``mmcv_version`` and ``time``. mmcv's Fp16OptimizerHook (TransNeXt-Base's ``fp16``) adds
  ``meta['fp16']['loss_scaler']`` (GradScaler state); the official repositories' apex runner
  (``EpochBasedRunnerAmp``) would add a top-level ``amp``. ``publish_model.py`` drops
  ``optimizer``; mmdet's writes the legacy (pre-1.6, non-zip) serialization.
- mmdet 3.0 / mmseg 1.0 on the mmengine runner (TransNeXt DINO and Mask2Former): ``meta`` with
  ``epoch``, ``iter``, ``cfg`` (text), ``seed``, ``experiment_name``, ``time``,
  ``mmengine_version`` and ``dataset_meta``; ``state_dict``, ``message_hub`` (HistoryBuffers),
  ``optimizer`` (with ``--amp``, the GradScaler state as its ``loss_scaler``) and
  ``param_schedulers``.
"""
from collections import OrderedDict
from typing import Dict, Sequence

import numpy as np
import torch


def perturbed_state(model: torch.nn.Module, seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """``model``'s state dict (``_metadata`` kept, as mmcv's ``weights_to_cpu`` keeps it) with
    every floating-point parameter moved off its initialisation, so that a model that did not
    load the file cannot hold the same values."""
    generator = torch.Generator().manual_seed(seed)
    params = {name for name, _ in model.named_parameters()}
    state = model.state_dict()
    unset = [name for name, value in state.items()
             if value.is_floating_point() and not torch.isfinite(value).all()]
    if unset:  # e.g. a parameter made with torch.empty and no init_weights() yet
        raise ValueError(f'the model to write holds non-finite tensors: {unset}')
    for name, value in state.items():
        if name in params and value.is_floating_point():
            state[name] = value + 0.01 * torch.randn(value.shape, generator=generator)
    return state


def _adamw_state(state: Dict[str, torch.Tensor]) -> dict:
    """An AdamW ``state_dict()`` after one step over the float tensors of ``state``."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    return optimizer.state_dict()


def _save(checkpoint: dict, path: str, legacy: bool = False) -> None:
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)


def write_mmcv1_file(path: str, state: Dict[str, torch.Tensor], library: str,
                     classes: Sequence[str], config_text: str,
                     palette: Sequence[Sequence[int]] = None, *, published: bool = False,
                     fp16: bool = False, apex_amp: bool = False,
                     save_best: bool = False) -> dict:
    """A checkpoint as the mmcv 1.7 runner of mmdet 2.28 (``library='mmdet'``) or mmseg 0.30
    (``'mmseg'``) writes it; ``published``: then passed through that library's
    ``publish_model.py``; ``save_best``: evaluated with ``save_best`` (TransXNet's Semantic FPN).
    Returns what was saved."""
    meta = {
        'env_info': 'sys.platform: linux\nPython: 3.8.16\nCUDA available: True\n'
                    'PyTorch: 1.12.1\nMMCV: 1.7.1\nMMCV CUDA Compiler: 11.3',
        'seed': None,
        'exp_name': 'official_config.py',
    }
    if library == 'mmdet':
        meta['config'] = config_text
        meta.update(mmdet_version='2.28.2+e9cae2d', CLASSES=tuple(classes))
        meta.update(epoch=12, iter=87960, hook_msgs={'last_ckpt': '/work_dirs/epoch_12.pth'})
    else:
        meta.update(mmseg_version='0.30.0+8ea4ea5', config=config_text, CLASSES=tuple(classes),
                    PALETTE=[list(c) for c in palette])
        meta.update(epoch=1, iter=160000, hook_msgs={'last_ckpt': '/work_dirs/iter_160000.pth'})
        if save_best:  # mmseg 0.30's evaluate() gives numpy float64 scores
            meta['hook_msgs'].update(best_score=np.float64(48.54) / 100.0,
                                     best_ckpt='/work_dirs/best_mIoU_iter_152000.pth')
    if fp16:  # mmcv's Fp16OptimizerHook keeps torch's GradScaler state in the runner's meta
        meta['fp16'] = {'loss_scaler': {'scale': 512.0, 'growth_factor': 2.0,
                                        'backoff_factor': 0.5, 'growth_interval': 2000,
                                        '_growth_tracker': 731}}
    meta.update(mmcv_version='1.7.1', time='Tue Nov 28 10:42:17 2023')
    checkpoint = {'meta': meta, 'state_dict': state}
    if not published:
        checkpoint['optimizer'] = _adamw_state(state)
    if apex_amp:  # apex.amp.state_dict(): one entry per loss scaler
        checkpoint['amp'] = OrderedDict(loss_scaler0={'loss_scale': 512.0, 'unskipped': 1341})
    _save(checkpoint, path, legacy=published and library == 'mmdet')
    return checkpoint


def write_mmengine_file(path: str, state: Dict[str, torch.Tensor], dataset_meta: dict,
                        config_text: str) -> dict:
    """A checkpoint as the mmengine 0.7 runner of mmdet 3.0 / mmseg 1.0 writes it (Runner.
    save_checkpoint: meta, state_dict, message_hub, optimizer, param_schedulers)."""
    from mmengine.logging import HistoryBuffer
    losses = HistoryBuffer()
    for value in (1.25, 1.5, 1.125):
        losses.update(value)
    message_hub = {
        'log_scalars': {'train/loss': losses, 'train/lr': HistoryBuffer([1e-4], [1])},
        'runtime_info': {'epoch': 12, 'iter': 90000, 'max_iters': 90000,
                         'dataset_meta': dataset_meta, 'best_score': np.float64(0.4854)},
        'resumed_keys': {'train/loss': True, 'train/lr': True, 'epoch': True, 'iter': True},
    }
    meta = {'epoch': 12, 'iter': 90000, 'cfg': config_text, 'seed': 2035342009,
            'experiment_name': 'official_config_20231201_101010', 'time': '20231201_101010',
            'mmengine_version': '0.7.4', 'dataset_meta': dataset_meta}
    schedulers = [{'begin': 0, 'end': 1000, 'by_epoch': False, 'last_step': 999,
                   'start_factor': 0.001, 'end_factor': 1.0, '_last_lr': [0.0001]}]
    optimizer = _adamw_state(state)
    # trained with ``--amp``, as the official train.py offers: mmengine's AmpOptimWrapper keeps
    # torch's GradScaler state beside the optimizer's
    optimizer['loss_scaler'] = {'scale': 512.0, 'growth_factor': 2.0, 'backoff_factor': 0.5,
                                'growth_interval': 2000, '_growth_tracker': 731}
    checkpoint = {'meta': meta, 'state_dict': state, 'message_hub': message_hub,
                  'optimizer': optimizer, 'param_schedulers': schedulers}
    _save(checkpoint, path)
    return checkpoint
