"""Predict with an exported whole model (``export.py --part predict``) in onnxruntime and draw
the predictions as ``tools/test.py --show-dir`` (and so ``tools/demo.py``) does with PyTorch: the
config's own visualizer, given the graph's outputs as mmdet's / mmseg's data samples.

    python tools/deployment/export.py configs/demo/mask-rcnn_transnext-micro_fpn_shapes-128.py \\
        work_dirs/demo/iter_300.pth --part predict --shape 128 128 --out mask_rcnn.onnx
    python tools/deployment/predict_onnx.py \\
        configs/demo/mask-rcnn_transnext-micro_fpn_shapes-128.py mask_rcnn.onnx \\
        data/generated/shapes_coco/val/000000.jpg --out-dir onnx_predictions

Each image is resized to the graph's input size and normalised with the config's
``data_preprocessor`` mean, std and channel order (the graph takes the normalised image); the
picture is drawn at that size. Needs onnxruntime, no PyTorch model and no checkpoint.
"""
import argparse
import os.path as osp
from typing import List

from mmtransnext.cli import (ToolError, check_file, check_output_dir, image_tensor, library_of,
                             load_config, positive_int, read_image, run_main)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config the graph was exported from')
    parser.add_argument('onnx', help="graph written by export.py --part predict")
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--out-dir', required=True, help='where the pictures are written')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections drawn above this score (default: %(default)s, as '
                        "mmdet's visualization hook)")
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='onnxruntime intra-op threads (default: its choice)')
    return parser.parse_args(argv)


def _graph_size(session) -> tuple:
    dims = session.get_inputs()[0].shape
    if not all(isinstance(d, int) for d in dims[2:]):
        raise ToolError('the graph has free height and width; this demo draws graphs '
                               'exported at one size (export.py without --dynamic)')
    return int(dims[2]), int(dims[3])


def _visualizer(cfg, library: str):
    """The config's visualizer with its dataset's class names and palette (what the test
    loop's visualization hook draws with)."""
    import importlib
    registry = importlib.import_module(f'{library}.registry')
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', library))
    dataset = cfg.test_dataloader.dataset
    meta = dict(getattr(registry.DATASETS.get(dataset.type), 'METAINFO', {}))
    meta.update(dataset.get('metainfo') or {})
    # pictures go to out_file only, not to the config's storage backends
    visualizer = registry.VISUALIZERS.build(dict(cfg.visualizer, name='onnx_demo',
                                                 vis_backends=None, save_dir=None))
    visualizer.dataset_meta = meta
    return visualizer


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    check_file(args.onnx, 'ONNX file')
    check_output_dir(args.out_dir, '--out-dir')
    cfg = load_config(args.config)
    library = library_of(cfg, args.config)
    from mmtransnext import deployment
    session = deployment.onnx_session(args.onnx, args.threads)
    names = [o.name for o in session.get_outputs()]
    expected = ['output'] if library == 'mmseg' else ['dets', 'labels']
    if names[:len(expected)] != expected:
        raise ToolError(f'{args.onnx} has outputs {names}, not those of a whole '
                               f'{library} model ({expected}): export it with --part predict')
    size = _graph_size(session)
    visualizer = _visualizer(cfg, library)
    import os
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    for path in args.images:
        image = read_image(path, size)
        x = image_tensor(image, cfg)
        outputs = deployment.run_onnx(session, x)
        sample = deployment.to_data_sample(outputs, library, x.shape)
        out_file = osp.join(args.out_dir, osp.basename(path))
        # mmseg's visualizer has no score threshold
        extra = dict(pred_score_thr=args.score_thr) if library == 'mmdet' else {}
        visualizer.add_datasample(osp.basename(path), image, sample, draw_gt=False, show=False,
                                  out_file=out_file, **extra)
        found = (f'{len(sample.pred_instances)} detections' if library == 'mmdet' else
                 f'classes {sorted(set(sample.pred_sem_seg.data.unique().tolist()))}')
        print(f'{path}: {found} -> {out_file}')
        written.append(out_file)
    return written


if __name__ == '__main__':
    run_main(main)
