# Multi-scale + flip evaluation with interpolated position bias (official: 51.5 mIoU): tables
# built for 800 px (closer to the average test size) and resized to each feature map, whole-image
# inference. Evaluation only: train with the single-scale config it derives from.
_base_ = './upernet_transnext-tiny_8xb2-160k_ade20k-512x512.py'
model = dict(
    _delete_=True,
    type='SegTTAModel',
    module=dict(
        _base_.model,
        backbone=dict(_base_.model.backbone, img_size=800),
        test_cfg=dict(mode='whole')))
test_dataloader = dict(dataset=dict(pipeline=_base_.tta_pipeline))
