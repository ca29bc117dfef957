"""The configs in configs/ load, build, and reproduce the official recipes and model sizes."""
import copy
import functools
import glob
import os.path as osp
from typing import Dict

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import MODELS, PARAM_SCHEDULERS, init_default_scope
from model_index import indexed_parameters

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')

# Full-model parameter counts of the official release (model-zoo tables), as printed there: the
# tolerance is 0.5% or half a unit of the last printed digit, whichever is larger.
OFFICIAL_PARAMS: Dict[str, str] = {
    'mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py': '47.9',
    'mask_rcnn/mask-rcnn_transnext-small_fpn_1x_coco.py': '69.3',
    'mask_rcnn/mask-rcnn_transnext-base_fpn_1x_coco.py': '109.2',
    'dino/dino-4scale_transnext-tiny_8xb2-12e_coco.py': '47.8',
    'dino/dino-5scale_transnext-tiny_8xb2-12e_coco.py': '48.1',
    'dino/dino-5scale_transnext-small_8xb2-12e_coco.py': '69.6',
    'dino/dino-5scale_transnext-base_8xb2-12e_coco.py': '110',
    'upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512.py': '59',
    'upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512_ms.py': '59',
    'upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512_ms-extrapolation.py': '59',
    'upernet/upernet_transnext-small_8xb2-160k_ade20k-512x512.py': '80',
    'upernet/upernet_transnext-small_8xb2-160k_ade20k-512x512_ms.py': '80',
    'upernet/upernet_transnext-small_8xb2-160k_ade20k-512x512_ms-extrapolation.py': '80',
    'upernet/upernet_transnext-base_8xb2-160k_ade20k-512x512.py': '121',
    'upernet/upernet_transnext-base_8xb2-160k_ade20k-512x512_ms.py': '121',
    'upernet/upernet_transnext-base_8xb2-160k_ade20k-512x512_ms-extrapolation.py': '121',
    'mask2former/mask2former_transnext-tiny_8xb2-160k_ade20k-512x512.py': '47.5',
    'mask2former/mask2former_transnext-small_8xb2-160k_ade20k-512x512.py': '69.0',
    'mask2former/mask2former_transnext-base_8xb2-160k_ade20k-512x512.py': '109',
}
# Demo configs: TransNeXt-Micro (12.42M backbone) with shrunk heads; counts measured here.
DEMO_PARAMS = {
    'demo/mask-rcnn_transnext-micro_fpn_shapes-128.py': 15.06e6,
    'demo/dino-4scale_transnext-micro_shapes-128.py': 16.18e6,
    'demo/upernet_transnext-micro_shapes-128.py': 14.84e6,
    'demo/mask2former_transnext-micro_shapes-128.py': 18.95e6,
}
# TransXNet configs: whole-model counts measured here (the official READMEs print none); the
# backbone counts must equal the official detection backbone's exactly (shared/reference §6),
# minus stage 1's output norm (2 x 48 / 64 / 76) where RetinaNet's start_level=1 leaves it out.
TRANSXNET_PARAMS = {
    'mask_rcnn/mask-rcnn_transxnet-tiny_fpn_1x_coco.py': 32_500_704,
    'mask_rcnn/mask-rcnn_transxnet-small_fpn_1x_coco.py': 46_519_500,
    'mask_rcnn/mask-rcnn_transxnet-base_fpn_1x_coco.py': 67_558_810,
    'retinanet/retinanet_transxnet-tiny_fpn_1x_coco.py': 22_439_812,
    'retinanet/retinanet_transxnet-small_fpn_1x_coco.py': 36_601_936,
    'retinanet/retinanet_transxnet-base_fpn_1x_coco.py': 58_006_790,
    'sem_fpn/fpn_transxnet-tiny_8xb4-80k_ade20k-512x512.py': 16_599_942,
    'sem_fpn/fpn_transxnet-small_8xb4-80k_ade20k-512x512.py': 30_618_738,
    'sem_fpn/fpn_transxnet-base_8xb4-80k_ade20k-512x512.py': 51_658_048,
}
TRANSXNET_DEMO_PARAMS = {
    'demo/mask-rcnn_transxnet-tiny_fpn_shapes-128.py': 14_777_114,
    'demo/retinanet_transxnet-tiny_fpn_shapes-128.py': 13_997_271,
    'demo/fpn_transxnet-tiny_shapes-128.py': 13_231_100,
}
TRANSXNET_BACKBONE = {'tiny': 12_386_544, 'small': 26_352_092, 'base': 47_337_130}
TRANSXNET_CHANNELS = dict(tiny=[48, 96, 224, 448], small=[64, 128, 320, 512],
                          base=[76, 152, 336, 672])
BACKBONE_PARAMS = {'micro': 12.42e6, 'tiny': 27.68e6, 'small': 49.16e6, 'base': 88.95e6}
DROP_PATH = {  # official drop-path rates per family and size
    'mask_rcnn': dict(tiny=0.4, small=0.6, base=0.7),
    'dino': dict(tiny=0.3, small=0.5, base=0.6),
    'upernet': dict(tiny=0.4, small=0.6, base=0.7),
    'mask2former': dict(tiny=0.3, small=0.5, base=0.6),
}
CHANNELS = dict(tiny=[72, 144, 288, 576], small=[72, 144, 288, 576], base=[96, 192, 384, 768])
DEPTHS = dict(tiny=[2, 2, 15, 2], small=[5, 5, 22, 5], base=[5, 5, 23, 5])


def transnext_imagenet_url(size: str) -> str:
    """The official TransNeXt ImageNet-1K file (its model card on huggingface.co)."""
    return (f'https://huggingface.co/DaiShiResearch/transnext-{size}-224-1k/resolve/main/'
            f'transnext_{size}_224_1k.pth?download=true')


def transxnet_imagenet_url(size: str) -> str:
    """The official TransXNet ImageNet-1K file (LMMMEng/TransXNet's v1.0 release)."""
    return f'https://github.com/LMMMEng/TransXNet/releases/download/v1.0/transx-{size[0]}.pth.tar'


def _checkpoints(node, where='model'):
    """``(where, checkpoint)`` of every ``init_cfg=dict(type='Pretrained')`` under ``node``."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained':
            yield where, node.get('checkpoint')
        for key, value in node.items():
            yield from _checkpoints(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _checkpoints(value, f'{where}[{i}]')


def test_no_shipped_config_names_a_local_pretrained_file():
    """Every pretrained file a shipped config starts from (backbone init_cfg, load_from) is an
    official release named by URL: on a networked machine nothing is to be put by hand."""
    shipped = [p for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True)
               if '_base_' not in p.split(osp.sep) and '/demo/' not in p]
    named = {}
    for path in shipped:
        cfg = Config.fromfile(path)
        for where, checkpoint in _checkpoints(cfg.model):
            named[f'{osp.relpath(path, CONFIGS)}: {where}'] = checkpoint
        if cfg.get('load_from'):
            named[f'{osp.relpath(path, CONFIGS)}: load_from'] = cfg.load_from
    # 28 detection/segmentation backbones (UperNet: 3 sizes x ss, ms, ms-extrapolation), 2
    # classification fine-tunes
    assert len(named) == 30
    official = {transnext_imagenet_url(s) for s in ('tiny', 'small', 'base')} | \
        {transxnet_imagenet_url(s) for s in ('tiny', 'small', 'base')}
    assert {k: v for k, v in named.items() if v not in official} == {}


def _all_configs():
    """Detection and segmentation configs (configs/classification: tests/test_classification)."""
    paths = glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True)
    return sorted(osp.relpath(p, CONFIGS) for p in paths if '_base_' not in p.split(osp.sep)
                  and not osp.relpath(p, CONFIGS).startswith('classification'))


@functools.lru_cache(maxsize=None)
def _load(rel: str) -> Config:
    return Config.fromfile(osp.join(CONFIGS, rel))


def load(rel: str) -> Config:
    """The config ``configs/<rel>`` (a copy), with its library's default scope set."""
    cfg = copy.deepcopy(_load(rel))
    init_default_scope(cfg.default_scope)
    return cfg


def backbone_cfg(cfg: Config):
    model = cfg.model.module if cfg.model.type == 'SegTTAModel' else cfg.model
    return model.backbone


def family_and_size(rel: str):
    family = rel.split('/')[0]
    size = next(s for s in ('tiny', 'small', 'base') if f'transnext-{s}' in rel)
    return family, size


def test_every_config_is_listed():
    assert set(_all_configs()) == set(OFFICIAL_PARAMS) | set(DEMO_PARAMS) | \
        set(TRANSXNET_PARAMS) | set(TRANSXNET_DEMO_PARAMS)


@pytest.mark.parametrize('rel', sorted(OFFICIAL_PARAMS))
def test_recipe_backbone(rel):
    cfg = load(rel)
    family, size = family_and_size(rel)
    backbone = backbone_cfg(cfg)
    assert cfg.custom_imports.imports[0] == 'mmtransnext'
    assert backbone.type == 'TransNeXt' and backbone.arch == size
    assert backbone.pretrain_size == 224
    assert backbone.drop_path_rate == DROP_PATH[family][size]
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=transnext_imagenet_url(size))
    extrapolation = rel.endswith('_ms-extrapolation.py')
    assert backbone.is_extrapolation == extrapolation
    expected_img_size = {'mask_rcnn': 800, 'dino': 800, 'mask2former': 512,
                         'upernet': 800 if rel.endswith('_ms.py') else 512}[family]
    if not extrapolation:  # img_size is unused with extrapolation
        assert backbone.img_size == expected_img_size
    four_scale = '4scale' in rel
    assert tuple(backbone.out_indices) == ((1, 2, 3) if four_scale else (0, 1, 2, 3))
    channels = CHANNELS[size][1:] if four_scale else CHANNELS[size]
    model = cfg.model.module if cfg.model.type == 'SegTTAModel' else cfg.model
    head_in = model.neck.in_channels if family in ('mask_rcnn', 'dino') else \
        model.decode_head.in_channels
    assert list(head_in) == channels
    if family == 'dino':
        levels = 4 if four_scale else 5
        assert model.num_feature_levels == levels == model.neck.num_outs
        assert model.encoder.layer_cfg.self_attn_cfg.num_levels == levels
        assert model.decoder.layer_cfg.cross_attn_cfg.num_levels == levels
    if family == 'upernet':
        assert model.auxiliary_head.in_channels == CHANNELS[size][2]


@pytest.mark.parametrize('family', ['mask_rcnn', 'dino', 'upernet', 'mask2former'])
def test_recipe_optimizer_and_schedule(family):
    rel = next(r for r in OFFICIAL_PARAMS if r.startswith(family) and 'tiny' in r)
    cfg = load(rel)
    optim = cfg.optim_wrapper
    opt = optim.optimizer
    assert opt.type == 'AdamW' and tuple(opt.betas) == (0.9, 0.999)
    assert opt.weight_decay == 0.05
    assert cfg.auto_scale_lr.base_batch_size == (8 if family == 'dino' else 16)
    if family == 'mask_rcnn':
        assert opt.lr == 1e-4 and optim.get('clip_grad') is None
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.train_cfg.max_epochs == 12
        warmup, step = cfg.param_scheduler
        assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == \
            ('LinearLR', 0.001, 501, False)
        assert (step.type, list(step.milestones), step.gamma) == ('MultiStepLR', [8, 11], 0.1)
        assert cfg.train_pipeline[2].scale == (1333, 800) and cfg.train_pipeline[3].prob == 0.5
    elif family == 'dino':
        assert opt.lr == 1e-4 and optim.clip_grad == dict(max_norm=0.1, norm_type=2)
        assert optim.type == 'AmpOptimWrapper' and optim.loss_scale == 512.
        assert optim.accumulative_counts == 2 and cfg.train_dataloader.batch_size == 1
        assert cfg.train_cfg.max_epochs == 12
        assert [s.milestones for s in cfg.param_scheduler] == [[11]]
        assert cfg.train_pipeline[3].type == 'RandomChoice'  # DINO's multi-scale + crop
    elif family == 'upernet':
        assert opt.lr == 6e-5 and optim.get('clip_grad') is None
        assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_iters == 160000
        assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
        assert cfg.model.data_preprocessor.size == (512, 512)
    else:
        assert opt.lr == 1e-4 and opt.eps == 1e-8
        assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
        assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_iters == 160000
        assert cfg.train_cfg.val_interval == 5000
        (poly, ) = cfg.param_scheduler
        assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9, 0, 160000)


def _lrs(cfg: Config, steps: int) -> Dict[int, float]:
    """lr before each of the first ``steps`` iterations (iteration-based schedulers)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))],
                                  lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                  for s in cfg.param_scheduler if not s.get('by_epoch', True)]
    seen = {}
    for i in range(steps):
        seen[i] = optimizer.param_groups[0]['lr']
        optimizer.step()
        for s in schedulers:
            s.step()
    return seen


def test_upernet_schedule_equals_mmcv_poly_with_linear_warmup():
    """mmseg 0.x: lr = base * (1 - i / 160000) * (1e-6 + (1 - 1e-6) * min(i, 1500) / 1500)."""
    cfg = load('upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512.py')
    base = cfg.optim_wrapper.optimizer.lr
    seen = _lrs(cfg, 3001)
    for i in (0, 1, 700, 1499, 1500, 1501, 3000):
        warmup = 1e-6 + (1 - 1e-6) * min(i, 1500) / 1500
        assert seen[i] == pytest.approx(base * (1 - i / 160000) * warmup, rel=1e-6)


def test_mask_rcnn_warmup_equals_mmcv_linear_warmup():
    """mmdet 2.x: lr = base * (0.001 + 0.999 * min(i, 500) / 500) in the first epoch."""
    cfg = load('mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py')
    base = cfg.optim_wrapper.optimizer.lr
    seen = _lrs(cfg, 1001)
    for i in (0, 1, 250, 499, 500, 501, 1000):
        assert seen[i] == pytest.approx(base * (0.001 + 0.999 * min(i, 500) / 500), rel=1e-6)


def test_upernet_ms_configs_test_with_the_official_protocol():
    for mode in ('ms', 'ms-extrapolation'):
        cfg = load(f'upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512_{mode}.py')
        assert cfg.model.type == 'SegTTAModel' and cfg.model.module.test_cfg.mode == 'whole'
        load_image, tta = cfg.test_dataloader.dataset.pipeline
        resizes, flips = tta.transforms[0], tta.transforms[1]
        assert [r.scale for r in resizes] == [(int(2048 * r), int(512 * r))
                                              for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
        assert all(r.keep_ratio for r in resizes)
        assert [f.prob for f in flips] == [0., 1.]


def _official_backbone_keys(depths, head_keys=()):
    """The custom_keys of the official DINO / Mask2Former TransNeXt configs, for ``depths``."""
    nodecay, decay = dict(lr_mult=0.1, decay_mult=0), dict(lr_mult=0.1)
    keys = {'attn.query_embedding': nodecay, 'relative_pos_bias_local': nodecay, 'cpb': nodecay,
            'temperature': nodecay, 'attn.learnable': decay, 'attn.norm': nodecay}
    for name in ('attn.q', 'attn.kv', 'attn.qkv', 'attn.sr', 'attn.proj', 'mlp.fc1', 'mlp.fc2',
                 'mlp.dwconv.dwconv'):
        keys[f'{name}.weight'], keys[f'{name}.bias'] = decay, nodecay
    for stage in range(len(depths) - 1):
        keys[f'backbone.norm{stage + 1}'] = nodecay
        keys[f'backbone.patch_embed{stage + 1}.norm'] = nodecay
        keys[f'backbone.patch_embed{stage + 1}.proj.weight'] = decay
        keys[f'backbone.patch_embed{stage + 1}.proj.bias'] = nodecay
    for stage, blocks in enumerate(depths):
        for block in range(blocks):
            keys[f'backbone.block{stage + 1}.{block}.norm'] = nodecay
    for key in head_keys:
        keys[key] = dict(lr_mult=1.0, decay_mult=0.0)
    return keys


def _groups(optimizer: dict, paramwise_cfg: dict, model: torch.nn.Module):
    """``{parameter name: (lr, weight decay)}`` as mmengine's default constructor sets them."""
    optim_wrapper = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=optimizer), paramwise_cfg)(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g['lr'], g['weight_decay'])
            for g in optim_wrapper.optimizer.param_groups for p in g['params']}


@pytest.mark.parametrize('rel,head_keys', [
    ('dino/dino-4scale_transnext-tiny_8xb2-12e_coco.py', ()),
    ('mask2former/mask2former_transnext-tiny_8xb2-160k_ade20k-512x512.py',
     ('decode_head.query_embed', 'decode_head.query_feat', 'decode_head.level_embed')),
])
def test_parameter_groups_equal_the_official_ones(rel, head_keys):
    cfg = load(rel)
    model = MODELS.build(cfg.model)
    ours = _groups(cfg.optim_wrapper.optimizer, cfg.optim_wrapper.paramwise_cfg, model)
    official_paramwise = dict(custom_keys=_official_backbone_keys(DEPTHS['tiny'], head_keys),
                              bias_decay_mult=0, norm_decay_mult=0, flat_decay_mult=0)
    official = _groups(cfg.optim_wrapper.optimizer, official_paramwise, model)
    assert ours == official
    lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    # spot checks of the official recipe, including its stage-4 quirk (base lr there)
    assert ours['backbone.block1.0.attn.q.weight'] == (0.1 * lr, wd)
    assert ours['backbone.block3.4.attn.cpb_fc1.weight'] == (0.1 * lr, 0)
    assert ours['backbone.block4.1.norm2.weight'] == (0.1 * lr, 0)
    assert ours['backbone.norm4.weight'] == (lr, 0)
    assert ours['backbone.patch_embed4.proj.weight'] == (lr, wd)


def test_mask_rcnn_and_upernet_no_decay_keys():
    cfg = load('mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py')
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert set(keys) == {'query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature',
                         'norm'}
    assert all(v == dict(decay_mult=0.) for v in keys.values())
    upernet = load('upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512.py')
    assert upernet.optim_wrapper.paramwise_cfg == cfg.optim_wrapper.paramwise_cfg


def test_base_mask_rcnn_trains_in_fp16_like_the_official_config():
    cfg = load('mask_rcnn/mask-rcnn_transnext-base_fpn_1x_coco.py')
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 512.
    assert load('mask_rcnn/mask-rcnn_transnext-tiny_fpn_1x_coco.py').optim_wrapper.type == \
        'OptimWrapper'


def _tolerance(printed: str) -> float:
    decimals = len(printed.split('.')[1]) if '.' in printed else 0
    value = float(printed) * 1e6
    return max(0.005 * value, 0.5 * 10 ** -decimals * 1e6)


@pytest.mark.slow
@pytest.mark.parametrize('rel', sorted(OFFICIAL_PARAMS) + sorted(DEMO_PARAMS))
def test_model_builds_with_official_parameter_count(rel):
    cfg = load(rel)
    model = MODELS.build(cfg.model)
    count = sum(p.numel() for p in model.parameters())
    if rel in OFFICIAL_PARAMS:
        printed = OFFICIAL_PARAMS[rel]
        assert abs(count - float(printed) * 1e6) <= _tolerance(printed), count
        assert count == indexed_parameters(rel)
        size = family_and_size(rel)[1]
    else:
        assert count == pytest.approx(DEMO_PARAMS[rel], rel=1e-3)
        size = 'micro'
    inner = model.module if cfg.model.type == 'SegTTAModel' else model
    backbone = sum(p.numel() for p in inner.backbone.parameters())
    assert backbone == pytest.approx(BACKBONE_PARAMS[size], rel=5e-4)


# ----------------------------------------------------------------------------- TransXNet
def _xnet_size(rel: str) -> str:
    return next(s for s in ('tiny', 'small', 'base') if f'transxnet-{s}' in rel)


@pytest.mark.parametrize('rel', sorted(TRANSXNET_PARAMS))
def test_transxnet_recipe_backbone_and_neck(rel):
    cfg = load(rel)
    family, size = rel.split('/')[0], _xnet_size(rel)
    backbone = cfg.model.backbone
    assert cfg.custom_imports.imports[0] == 'mmtransnext'
    assert backbone.type == 'TransXNet' and backbone.arch == size
    assert backbone.pretrain_size == 224
    assert backbone.drop_path_rate == dict(tiny=0.1, small=0.2, base=0.3)[size]
    assert backbone.norm_cfg == dict(type='SyncBN', requires_grad=True)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=transxnet_imagenet_url(size))
    channels = TRANSXNET_CHANNELS[size]
    neck = cfg.model.neck
    assert neck.type == 'FPN' and neck.out_channels == 256
    if family == 'retinanet':
        # the official start_level=1: stages 2-4 reach the FPN, extra levels from stage 4
        assert tuple(backbone.out_indices) == (1, 2, 3)
        assert list(neck.in_channels) == channels[1:] and neck.start_level == 0
        assert neck.add_extra_convs == 'on_input' and neck.num_outs == 5
    else:
        assert tuple(backbone.out_indices) == (0, 1, 2, 3)
        assert list(neck.in_channels) == channels
        assert neck.num_outs == (4 if family == 'sem_fpn' else 5)
    if family == 'sem_fpn':
        head = cfg.model.decode_head
        assert (head.type, head.channels, head.dropout_ratio, head.num_classes) == \
            ('FPNHead', 128, 0.1, 150)
        assert head.norm_cfg.type == 'SyncBN' and cfg.model.test_cfg.mode == 'whole'


@pytest.mark.parametrize('family', ['mask_rcnn', 'retinanet'])
def test_transxnet_detection_recipe(family):
    rel = next(r for r in TRANSXNET_PARAMS if r.startswith(family) and 'tiny' in r)
    cfg = load(rel)
    optim = cfg.optim_wrapper
    opt = optim.optimizer
    assert (opt.type, opt.lr, tuple(opt.betas)) == ('AdamW', 1e-4, (0.9, 0.999))
    assert optim.type == 'OptimWrapper' and optim.get('clip_grad') is None
    if family == 'mask_rcnn':
        assert opt.weight_decay == 0.05
        assert optim.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.)}
    else:
        assert opt.weight_decay == 1e-4 and 'paramwise_cfg' not in optim
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_cfg.max_epochs == 12
    warmup, step = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == \
        ('LinearLR', 0.001, 501, False)
    assert (step.type, list(step.milestones), step.gamma) == ('MultiStepLR', [8, 11], 0.1)
    pipeline = cfg.train_pipeline
    assert pipeline[2].scale == (1333, 800) and pipeline[2].keep_ratio
    assert pipeline[3].prob == 0.5
    assert cfg.model.data_preprocessor.pad_size_divisor == 32


def test_transxnet_mask_rcnn_parameter_groups_equal_the_official_ones():
    """The official custom_keys also list two Swin names, which match no TransXNet parameter."""
    cfg = load('mask_rcnn/mask-rcnn_transxnet-tiny_fpn_1x_coco.py')
    cfg.model.backbone.depths = [1, 1, 1, 1]
    model = MODELS.build(cfg.model)
    ours = _groups(cfg.optim_wrapper.optimizer, cfg.optim_wrapper.paramwise_cfg, model)
    official = _groups(cfg.optim_wrapper.optimizer, dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.), 'relative_position_bias_table':
        dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}), model)
    assert ours == official
    wd = cfg.optim_wrapper.optimizer.weight_decay
    assert ours['backbone.network.0.0.norm1.weight'][1] == 0
    assert ours['backbone.network.4.0.mlp.norm.weight'][1] == 0
    assert ours['backbone.norm6.bias'][1] == 0
    assert ours['backbone.network.0.0.mlp.fc1.2.weight'][1] == wd  # a BatchNorm, not 'norm'
    assert ours['backbone.relative_pos_enc.0'][1] == wd


def test_transxnet_semantic_fpn_recipe():
    cfg = load('sem_fpn/fpn_transxnet-tiny_8xb4-80k_ade20k-512x512.py')
    optim = cfg.optim_wrapper
    assert optim.type == 'OptimWrapper' and optim.get('clip_grad') is None
    opt = optim.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 1e-4)
    assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 32
    assert cfg.train_cfg.max_iters == 80000 and cfg.train_cfg.val_interval == 4000
    assert cfg.model.data_preprocessor.size == (512, 512)
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResize'].scale == (2048, 512)
    assert tuple(train['RandomResize'].ratio_range) == (0.5, 2.0)
    assert train['RandomCrop'].crop_size == (512, 512)
    assert train['RandomCrop'].cat_max_ratio == 0.75 and 'PhotoMetricDistortion' in train
    test = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert test[1:3] == ['Resize', 'ResizeToMultiple']  # the official AlignResize
    assert cfg.test_dataloader.dataset.pipeline[1].scale == (2048, 512)
    assert cfg.test_dataloader.dataset.pipeline[2].size_divisor == 32


def test_transxnet_semantic_fpn_schedule_equals_mmcv_cosine_with_linear_warmup():
    """mmseg 0.x: lr = cos(i) * (1 - 0.9 * (1 - i / 1000)) while i < 1000, where
    cos(i) = base * (1e-8 + (1 - 1e-8) * (1 + cos(pi * i / 80000)) / 2)."""
    import math
    cfg = load('sem_fpn/fpn_transxnet-tiny_8xb4-80k_ade20k-512x512.py')
    base = cfg.optim_wrapper.optimizer.lr
    seen = _lrs(cfg, 3001)
    for i in (0, 1, 500, 999, 1000, 1001, 3000):
        cosine = base * (1e-8 + (1 - 1e-8) * (1 + math.cos(math.pi * i / 80000)) / 2)
        warmup = 1 - 0.9 * (1 - i / 1000) if i < 1000 else 1
        assert seen[i] == pytest.approx(cosine * warmup, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('rel', sorted(TRANSXNET_PARAMS) + sorted(TRANSXNET_DEMO_PARAMS))
def test_transxnet_model_parameter_counts(rel):
    cfg = load(rel)
    model = MODELS.build(cfg.model)
    counts = {**TRANSXNET_PARAMS, **TRANSXNET_DEMO_PARAMS}
    assert sum(p.numel() for p in model.parameters()) == counts[rel]
    if not rel.startswith('demo/'):
        assert counts[rel] == indexed_parameters(rel)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    if rel.startswith('demo/'):
        return  # position tables built for 128 px
    size = _xnet_size(rel)
    norm0 = 2 * TRANSXNET_CHANNELS[size][0] if rel.startswith('retinanet') else 0
    assert backbone == TRANSXNET_BACKBONE[size] - norm0
