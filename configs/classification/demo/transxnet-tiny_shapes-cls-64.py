# TransXNet-T (12.4M backbone parameters, the full official depth) as a 3-class classifier of
# the generated shapes, from scratch on the CPU (tools/demo.py --classification).
_base_ = './shapes-cls-64_base.py'

model = dict(
    backbone=dict(type='TransXNet', arch='tiny', pretrain_size=64, out_indices=(3, ),
                  drop_path_rate=0.1),
    head=dict(in_channels=448))
