# Mask2Former 160k with a TransNeXt backbone on ADE20K, 512x512 crops: the official recipe
# (DaiShiResearch/TransNeXt segmentation/mask2former) on top of mmseg's Mask2Former-R50 config
# (AdamW 1e-4, eps 1e-8, wd 0.05, grad clip 0.01, poly 0.9 to 0, validation every 5000 iters).
# Size-specific configs set arch, drop_path_rate, head channels and the ImageNet checkpoint.
# Batch: 8 GPUs x 2 images (auto_scale_lr base 16).
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth?download=true'  # noqa: E501
_base_ = [
    'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    '../../_base_/transnext_paramwise.py',
]
# mmseg's Mask2Former head is mmdet's: both packages are imported.
custom_imports = dict(imports=['mmtransnext', 'mmdet.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='TransNeXt',
        arch='tiny',
        img_size=512,
        pretrain_size=224,
        is_extrapolation=False,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        # Official ImageNet-1K weights (huggingface.co/DaiShiResearch/transnext-<arch>-224-1k),
        # downloaded once into torch hub's cache; a local file instead:
        # --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[72, 144, 288, 576]))

# Backbone at 0.1x lr with the official no-decay keys; query/level embeddings at 1x, no decay.
# `_delete_` drops mmseg's own custom_keys ('backbone': 0.1x with decay), which the official
# recipe does not have.
__embed = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            **_base_.transnext_backbone_keys,
            'decode_head.query_embed': __embed,
            'decode_head.query_feat': __embed,
            'decode_head.level_embed': __embed,
        },
        bias_decay_mult=0.,
        norm_decay_mult=0.,
        flat_decay_mult=0.))
