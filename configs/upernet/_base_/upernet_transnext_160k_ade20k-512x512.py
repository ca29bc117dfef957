# UperNet 160k with a TransNeXt backbone on ADE20K, 512x512 crops: the official recipe
# (DaiShiResearch/TransNeXt segmentation/upernet, mmseg 0.x) in mmseg 1.x form. Size-specific
# configs set arch, drop_path_rate, head channels and the ImageNet checkpoint.
# Batch: 8 GPUs x 2 images (auto_scale_lr base 16).
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth?download=true'  # noqa: E501
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../../_base_/transnext_paramwise.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='TransNeXt',
        arch='tiny',
        img_size=512,
        pretrain_size=224,
        is_extrapolation=False,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        # Official ImageNet-1K weights (huggingface.co/DaiShiResearch/transnext-<arch>-224-1k),
        # downloaded once into torch hub's cache; a local file instead:
        # --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[72, 144, 288, 576], num_classes=150),
    auxiliary_head=dict(in_channels=288, num_classes=150),
    # Single-scale evaluation: sliding 512x512 window, stride 341.
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=_base_.transnext_no_decay_keys))
# mmcv 1.x 'poly' (power 1, min_lr 0) over all 160k iterations times its linear warm-up factor
# 1e-6 + (1 - 1e-6) * i / 1500 for i < 1500: overlapping mmengine schedulers multiply, and
# LinearLR reaches its end factor at step end - 1, hence 1501.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160000),
]
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Multi-scale + flip test of the official release (mmseg 0.x `--aug-test`): the image is
# resized to fit (2048 r, 512 r) for each ratio r, plain and flipped, and the softmax outputs
# are averaged. (mmseg 1.x's default tta_pipeline scales the original image by r instead.)
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
             for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ])
]
