# Official: box 51.1 / mask 45.5 mAP, 69.3M parameters.
_base_ = './_base_/mask-rcnn_transnext_fpn_1x_coco.py'
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth?download=true'  # noqa: E501
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint=checkpoint_file)))
