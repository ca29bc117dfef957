# The generated COCO-format shapes set (mmtransnext.datasets, written on first use under
# data/generated/, relative to the working directory): 300 train / 50 val 128x128 images of
# three classes. Demo configs build their dataloaders from these entries.
shapes_coco_root = 'data/generated/shapes_coco/'
shapes_coco_train = dict(
    type='ShapesCocoDataset',
    data_root=shapes_coco_root,
    ann_file='annotations/instances_train.json',
    data_prefix=dict(img='train/'),
    filter_cfg=dict(filter_empty_gt=True, min_size=4))
shapes_coco_val = dict(
    type='ShapesCocoDataset',
    data_root=shapes_coco_root,
    ann_file='annotations/instances_val.json',
    data_prefix=dict(img='val/'),
    test_mode=True)
shapes_coco_val_ann = shapes_coco_root + 'annotations/instances_val.json'
