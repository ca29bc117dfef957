# The generated ADE20K-format shapes set (mmtransnext.datasets, written on first use under
# data/generated/, relative to the working directory): 300 train / 50 val 128x128 images,
# classes background / square / circle / triangle.
shapes_ade_train = dict(
    type='ShapesADEDataset',
    data_root='data/generated/shapes_ade/',
    data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))
shapes_ade_val = dict(
    type='ShapesADEDataset',
    data_root='data/generated/shapes_ade/',
    data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'))
