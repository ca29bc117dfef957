# The TransXNet backbone as the official mmdet 2.28 / mmseg 0.30 recipes use it
# (LMMMEng/TransXNet, object_detection/ and semantic_segmentation/), shared by the Mask R-CNN,
# RetinaNet and Semantic FPN configs. Size-specific configs set arch, drop_path_rate and the
# ImageNet checkpoint.
#
# - SyncBN: the official backbone converts its BatchNorms to SyncBN whenever torch.distributed
#   is initialised, i.e. in every 8-GPU run; here the config says so (a single-process run
#   reverts it to BN).
# - pretrain_size 224: the relative-position tables of the ImageNet weights; they are resized
#   bicubically to each input, as officially.
transxnet_checkpoint = 'https://github.com/LMMMEng/TransXNet/releases/download/v1.0/transx-t.pth.tar'  # noqa: E501
transxnet_backbone = dict(
    type='TransXNet',
    arch='tiny',
    pretrain_size=224,
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.1,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    # Official ImageNet-1K weights (github.com/LMMMEng/TransXNet releases, transx-<t|s|b>.pth.tar),
    # downloaded once into torch hub's cache; a local file instead:
    # --cfg-options model.backbone.init_cfg.checkpoint=PATH
    init_cfg=dict(type='Pretrained', checkpoint=transxnet_checkpoint))
# Channels of the four stages per size (for necks and heads).
transxnet_channels = dict(
    tiny=[48, 96, 224, 448], small=[64, 128, 320, 512], base=[76, 152, 336, 672])
