"""Export a config's backbone or whole model to ONNX or a torch.export program, and check the
ONNX file in onnxruntime (CPU) against PyTorch.

    python tools/deployment/export.py \\
        configs/upernet/upernet_transnext-tiny_8xb2-160k_ade20k-512x512.py CHECKPOINT \\
        --format onnx --shape 512 512 --out upernet_tiny.onnx
    python tools/deployment/export.py configs/retinanet/retinanet_transxnet-tiny_fpn_1x_coco.py \\
        --part backbone --dynamic --out transxnet_tiny_backbone.onnx

The graph input is the preprocessed, normalised ``(1, 3, H, W)`` image (as mmdeploy's graphs):
mean/std, BGR-to-RGB and padding are left to the caller. ``--part model`` exports
``model(x, mode='tensor')``: segmentors' logits, detectors' raw head outputs before decoding and
NMS; ``--part predict`` the whole model with its post-processing, mmdeploy's outputs (``dets``
``(1, N, 5)``, ``labels`` and Mask R-CNN's ``masks`` for RetinaNet, Faster / Mask R-CNN and DINO,
the ``(1, 1, H, W)`` label map of UperNet, Semantic FPN and Mask2Former; predict_onnx.py draws
them); ``--part features`` the backbone and neck outputs. Without a checkpoint the weights are
random (the config's pretrained file is not loaded).
See mmtransnext/deployment/ and docs/deployment.md for what does not export.
"""
import argparse
import time

from mmtransnext.cli import (ToolError, check_file, check_output_file, demo_image, image_tensor,
                             is_tta_model, load_config, positive_int, run_main)


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    from mmtransnext.deployment import FORMATS, PARTS
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (mmdet or mmseg)')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint of the whole model (default: random weights)')
    parser.add_argument('--format', choices=FORMATS, default='onnx', dest='fmt')
    parser.add_argument('--part', choices=PARTS, default='model',
                        help="'backbone': stage features; 'features': backbone and neck "
                        "outputs; 'model': the tensor forward (default); 'predict': with the "
                        'post-processing (boxes after NMS or DINO\'s top-k, masks, label map)')
    parser.add_argument('--shape', type=positive_int, nargs=2, default=[512, 512],
                        metavar=('H', 'W'), help='example input size (default 512 512)')
    parser.add_argument('--dynamic', action='store_true', help='height and width free')
    parser.add_argument('--out', required=True, help='output file')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the onnxruntime-vs-PyTorch check of an ONNX export')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. model.backbone.attn_impl=torch')
    return parser.parse_args(argv)


def _strip_pretrained(node) -> None:
    """Random weights unless a checkpoint is given: the config's pretrained files are not
    needed to export (a checkpoint of the whole model replaces them)."""
    if isinstance(node, dict):
        if isinstance(node.get('init_cfg'), dict) and node['init_cfg'].get('type') == 'Pretrained':
            node['init_cfg'] = None
        node.pop('pretrained', None)
        for value in node.values():
            _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_pretrained(value)


def build_model(config: str, checkpoint=None, cfg_options=None):
    """The config's model in eval mode on CPU, with the checkpoint's weights if given."""
    cfg = load_config(config, cfg_options)
    if is_tta_model(cfg.model):
        raise ToolError(f'{config} builds a test-time-augmentation wrapper; export the '
                        'model it wraps')
    _strip_pretrained(cfg.model)
    from mmengine.registry import MODELS
    with MODELS.switch_scope_and_registry(None) as registry:
        model = registry.build(cfg.model)
    if checkpoint is not None:
        check_file(checkpoint, 'checkpoint')
        from mmengine.runner import load_checkpoint

        from mmtransnext.checkpoint import mmengine_loader
        with mmengine_loader():  # runner checkpoints, as tools/test.py reads them
            load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.eval()


def _check_predictions(path: str, model, shape, cfg) -> None:
    """onnxruntime's predictions against mmdet's / mmseg's ``predict`` on the first image of
    the bundled demo data, resized to ``shape`` and normalised as ``cfg`` says."""
    from mmtransnext import deployment
    x = image_tensor(demo_image(0, shape), cfg)
    outputs = deployment.run_onnx(deployment.onnx_session(path), x)
    figures = deployment.compare_predictions(outputs, deployment.reference_predictions(model, x))
    print('onnxruntime vs PyTorch predict (demo image): ' +
          ', '.join(f'{k} {v:.3g}' for k, v in figures.items()))


def main(argv=None) -> None:
    args = parse_args(argv)
    check_output_file(args.out, '--out')
    from mmtransnext import deployment
    model = build_model(args.config, args.checkpoint, args.cfg_options)
    start = time.perf_counter()
    try:
        result = deployment.export(model, args.out, args.shape, args.fmt, args.part,
                                   args.dynamic)
    except deployment.ExportError as err:
        raise ToolError(f'cannot export {args.config} (--part {args.part}): {err}') \
            from err
    print(f'wrote {result.path} ({result.fmt}, {result.part}, input {result.input_name} '
          f"1x3x{'HxW' if result.dynamic else '{}x{}'.format(*result.shape)}, "
          f'{len(result.output_names)} outputs) in {time.perf_counter() - start:.0f} s')
    print(f'position data: {result.tables}')
    if args.fmt == 'onnx' and not args.no_check and args.part == 'predict':
        _check_predictions(args.out, model, args.shape,
                           load_config(args.config, args.cfg_options))
    elif args.fmt == 'onnx' and not args.no_check:
        sizes = [tuple(args.shape)]
        if args.dynamic:
            sizes += list(deployment.DYNAMIC_CHECK_SIZES)
        errors = deployment.check_onnx(args.out, model, args.part, sizes)
        for (height, width), error in errors.items():
            print(f'onnxruntime vs PyTorch at {height}x{width}: max relative error {error:.2e}')


if __name__ == '__main__':
    run_main(main)
