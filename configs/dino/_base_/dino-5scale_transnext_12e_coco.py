# DINO 12e with a TransNeXt backbone on COCO detection: the official recipe
# (DaiShiResearch/TransNeXt detection/dino) on top of mmdet's DINO-4scale config, here with 5
# feature levels (stages 1-4 + one extra). Size-specific configs set arch, drop_path_rate, neck
# channels and the ImageNet checkpoint; the 4-scale config uses stages 2-4.
# Batch: 8 GPUs x 1 image, 2-step gradient accumulation (16 images per update); fp16.
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth?download=true'  # noqa: E501
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../../_base_/transnext_paramwise.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

model = dict(
    num_feature_levels=5,
    backbone=dict(
        _delete_=True,
        type='TransNeXt',
        arch='tiny',
        img_size=800,
        pretrain_size=224,
        is_extrapolation=False,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        # Official ImageNet-1K weights (huggingface.co/DaiShiResearch/transnext-<arch>-224-1k),
        # downloaded once into torch hub's cache; a local file instead:
        # --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[72, 144, 288, 576], num_outs=5),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=5))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=5))))

# AdamW 1e-4, wd 0.05, grad clip 0.1 (norm 2), backbone at 0.1x lr with the official no-decay
# keys; x0.1 at epoch 11 and DINO's multi-scale + crop augmentation come from the mmdet base.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys=_base_.transnext_backbone_keys,
        bias_decay_mult=0.,
        norm_decay_mult=0.,
        flat_decay_mult=0.),
    accumulative_counts=2)
train_dataloader = dict(batch_size=1)
# mmengine scales lr by (GPUs x batch_size) / base_batch_size and does not see the gradient
# accumulation, so the base is 8 x 1 here (16 images per update either way).
auto_scale_lr = dict(base_batch_size=8)
