# Multi-scale + flip evaluation with extrapolated position bias (official: 52.8 mIoU): tables
# regenerated for every feature map size, whole-image inference. Evaluation only: train with the
# single-scale config it derives from.
_base_ = './upernet_transnext-small_8xb2-160k_ade20k-512x512.py'
model = dict(
    _delete_=True,
    type='SegTTAModel',
    module=dict(
        _base_.model,
        backbone=dict(_base_.model.backbone, is_extrapolation=True),
        test_cfg=dict(mode='whole')))
test_dataloader = dict(dataset=dict(pipeline=_base_.tta_pipeline))
