"""Whole models with their post-processing (``part='predict'``) in onnxruntime against mmdet's
and mmseg's ``predict`` in PyTorch, the NMS and RoIAlign operators against mmcv's, the
predict-from-ONNX demo, and what is refused.

Models are the demo configs with one block per stage and mmdet's / mmseg's initial weights at
128x128 (the demo size); a RetinaNet so initialised scores every anchor near the focal-loss prior,
so its 20 kept boxes are set by small score differences: a sharp test of the ordering.
"""
import os.path as osp

import pytest
import torch

from mmtransnext import deployment
from mmtransnext.deployment.nms import ONNX_TRANSLATIONS, non_max_suppression
from mmtransnext.deployment.roi_align import ONNX_TRANSLATIONS as ROI_ALIGN_ONNX
from mmtransnext.deployment.roi_align import roi_align

from test_export import ROOT, shallow_demo_model, standard_ops_only

SIZE = (128, 128)


def _random_boxes(count: int, classes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * 100
    size = torch.rand(count, 2, generator=generator) * 40 + 1
    boxes = torch.cat([corner, corner + size], dim=1)
    scores = torch.rand(count, generator=generator)
    labels = torch.randint(classes, (count,), generator=generator)
    return boxes, scores, labels


@pytest.mark.parametrize('seed', [0, 1])
def test_nms_matches_mmcv_batched_nms(seed):
    """Per class, the boxes kept and their order are mmcv's ``batched_nms``'s (the computation
    mmdet's predict runs), with the score threshold applied first as mmdet does."""
    ops = pytest.importorskip('mmcv.ops')
    boxes, scores, labels = _random_boxes(300, 3, seed)
    per_class = torch.zeros(3, 300).scatter(0, labels[None], scores[None])
    selected = non_max_suppression(boxes[None], per_class[None], 1000, 0.5, 0.2)
    valid = torch.nonzero(scores > 0.2).flatten()
    _, keep = ops.batched_nms(boxes[valid], scores[valid], labels[valid],
                              dict(type='nms', iou_threshold=0.5))
    expected = valid[keep]
    assert (selected[:, 0] == 0).all()
    assert sorted(selected[:, 2].tolist()) == sorted(expected.tolist())
    for c in range(3):
        ours = selected[selected[:, 1] == c, 2]
        assert ours.tolist() == expected[labels[expected] == c].tolist()
    capped = non_max_suppression(boxes[None], per_class[None], 2, 0.5, 0.2)
    for c in range(3):
        assert capped[capped[:, 1] == c, 2].tolist() == \
            selected[selected[:, 1] == c, 2][:2].tolist()


class _Nms(torch.nn.Module):
    def forward(self, boxes, scores):
        return non_max_suppression(boxes, scores, 5, 0.4, 0.1)


def test_nms_onnx_is_standard_and_matches_eager(tmp_path):
    """The operator becomes ONNX NonMaxSuppression (no custom domain) and onnxruntime keeps
    what the eager operator keeps, for inputs other than the export example."""
    boxes, scores, labels = _random_boxes(50, 2, 0)
    per_class = torch.zeros(2, 50).scatter(0, labels[None], scores[None])
    program = torch.export.export(_Nms(), (boxes[None], per_class[None]), strict=False)
    path = str(tmp_path / 'nms.onnx')
    torch.onnx.export(program, (boxes[None], per_class[None]), dynamo=True,
                      custom_translation_table=ONNX_TRANSLATIONS, verbose=False).save(path)
    standard_ops_only(path)
    import onnx
    assert 'NonMaxSuppression' in {n.op_type for n in onnx.load(path).graph.node}
    session = deployment.onnx_session(path)
    boxes, scores, labels = _random_boxes(50, 2, 7)
    per_class = torch.zeros(2, 50).scatter(0, labels[None], scores[None])
    names = [i.name for i in session.get_inputs()]
    actual = session.run(None, {names[0]: boxes[None].numpy(), names[1]: per_class[None].numpy()})
    expected = non_max_suppression(boxes[None], per_class[None], 5, 0.4, 0.1)
    assert actual[0].tolist() == expected.tolist()


class _RoiAlign(torch.nn.Module):
    def __init__(self, sampling_ratio: int) -> None:
        super().__init__()
        self.sampling_ratio = sampling_ratio

    def forward(self, features, rois):
        return roi_align(features, rois, 7, 0.25, self.sampling_ratio, True)


@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_roi_align_onnx_matches_mmcv(tmp_path, sampling_ratio):
    """The operator becomes ONNX RoiAlign and onnxruntime pools what mmcv's aligned average
    RoIAlign (mmdet's RoI extractors' layer) pools, RoIs of several sizes, some past the map."""
    ops = pytest.importorskip('mmcv.ops')
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 8, 20, 24, generator=generator)
    boxes, _, _ = _random_boxes(12, 1, 3)
    rois = torch.cat([torch.zeros(12, 1), boxes], dim=1)
    module = _RoiAlign(sampling_ratio)
    program = torch.export.export(module, (features, rois), strict=False)
    path = str(tmp_path / 'roi_align.onnx')
    torch.onnx.export(program, (features, rois), dynamo=True,
                      custom_translation_table=ROI_ALIGN_ONNX, verbose=False).save(path)
    standard_ops_only(path)
    session = deployment.onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    actual = session.run(None, {names[0]: features.numpy(), names[1]: rois.numpy()})[0]
    expected = ops.roi_align(features, rois, (7, 7), 0.25, sampling_ratio, 'avg', True)
    torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-5, atol=1e-5)


WHOLE = {
    'dino': 'dino-4scale_transnext-micro_shapes-128.py',
    'retinanet': 'retinanet_transxnet-tiny_fpn_shapes-128.py',
    'mask_rcnn': 'mask-rcnn_transnext-micro_fpn_shapes-128.py',
    'sem_fpn': 'fpn_transxnet-tiny_shapes-128.py',
    'upernet': 'upernet_transnext-micro_shapes-128.py',
}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """``name -> (model, onnx path)``, each exported once for the tests below."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = shallow_demo_model(WHOLE[name])
            model.init_weights()
            if name == 'dino':
                _vary_sampling(model)
            path = str(tmp_path_factory.mktemp(name) / f'{name}.onnx')
            result = deployment.export(model.eval(), path, SIZE, part='predict',
                                       optimize=False)
            cache[name] = model, path, result
        return cache[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('name', ['retinanet', 'mask_rcnn', 'upernet'])
def test_whole_model_onnx_matches_predict(exported, name):
    """Image in, predictions out: onnxruntime's boxes, scores, labels and masks (RetinaNet on
    TransXNet, Mask R-CNN on TransNeXt) or label map (UperNet on TransNeXt) are those of
    ``model.predict``, standard operators only. (Semantic FPN takes UperNet's path; the export
    tool checks it on the demo image.)"""
    model, path, result = exported(name)
    standard_ops_only(path)
    session = deployment.onnx_session(path)
    for seed in (1, 2):
        x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(seed))
        outputs = deployment.run_onnx(session, x)
        figures = deployment.compare_predictions(outputs,
                                                 deployment.reference_predictions(model, x))
        if name in ('retinanet', 'mask_rcnn'):
            masks = name == 'mask_rcnn'
            assert result.output_names == ['dets', 'labels'] + ['masks'] * masks
            assert figures['count'] == figures['reference_count'] == 20
            assert figures['label_agreement'] == figures['matched'] == 1.0
            assert figures['box_max_abs'] < 1e-3
            assert figures['score_max_abs'] < 1e-5
            if masks:
                assert outputs[2].shape == (1, 20) + SIZE and outputs[2].dtype == torch.bool
                assert figures['mask_iou_min'] > 0.99
        else:
            assert result.output_names == ['output']
            assert outputs[0].shape == (1, 1) + SIZE and outputs[0].dtype == torch.int64
            assert figures['pixel_agreement'] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize('name', ['mask_rcnn', 'upernet'])
def test_predict_onnx_demo_draws(exported, name, tmp_path):
    """tools/deployment/predict_onnx.py draws the graph's predictions on a demo image with
    the config's visualizer; what it draws is the graph's output for that image."""
    import importlib.util

    import cv2
    _, path, _ = exported(name)
    image = str(tmp_path / 'scene.png')
    from mmtransnext.cli import demo_image
    cv2.imwrite(image, demo_image(0)[..., ::-1].copy())
    spec = importlib.util.spec_from_file_location(
        'predict_onnx', osp.join(ROOT, 'tools', 'deployment', 'predict_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out_dir = tmp_path / 'pictures'
    written = tool.main([osp.join(ROOT, 'configs', 'demo', WHOLE[name]), path, image,
                         '--out-dir', str(out_dir), '--score-thr', '0'])
    picture = cv2.imread(written[0])
    assert picture is not None and picture.shape[:2] == SIZE
    assert not (picture == cv2.imread(image)).all()  # something was drawn


def _vary_sampling(model: torch.nn.Module) -> None:
    """mmcv initialises deformable attention with sampling offsets and weights that do not
    depend on the query; random ones make the graph's sampling follow each query."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if type(module).__name__ == 'MultiScaleDeformableAttention':
            for linear in (module.sampling_offsets, module.attention_weights):
                linear.weight.data.normal_(0, 0.1, generator=generator)


@pytest.mark.slow
def test_dino_onnx_matches_predict(exported):
    """DINO on TransNeXt whole (transformer at the export size, deformable attention by
    GridSample, query selection, top-k scoring, box decoding): onnxruntime's detections are
    ``model.predict``'s in order, same labels, with standard operators only; the model keeps
    mmcv's attention modules after the export."""
    model, path, result = exported('dino')
    assert result.output_names == ['dets', 'labels']
    assert type(model.encoder.layers[0].self_attn).__module__.startswith('mmcv')
    standard_ops_only(path)
    session = deployment.onnx_session(path)
    for seed in (1, 2):
        x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(seed))
        dets, labels = deployment.run_onnx(session, x)
        reference = deployment.reference_predictions(model, x).pred_instances
        assert dets.shape == (1, 20, 5) and labels.shape == (1, 20)
        assert labels[0].tolist() == reference.labels.tolist()
        torch.testing.assert_close(dets[0, :, :4], reference.bboxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(dets[0, :, 4], reference.scores, rtol=0, atol=1e-5)


def test_predict_refuses_free_sizes(tmp_path):
    """``part='predict'`` with free sizes is refused with the reason."""
    model = shallow_demo_model(WHOLE['sem_fpn'])
    with pytest.raises(deployment.ExportError, match='one size'):
        deployment.export(model, str(tmp_path / 's.onnx'), SIZE, part='predict', dynamic=True)


def test_predict_refuses_other_deformable_pixel_decoders():
    """A Mask2Former whose pixel decoder only derives from mmdet's (its forward may differ from
    the one rewritten) is refused with the reason."""
    model = shallow_demo_model(MASK2FORMER)
    decoder = model.decode_head.pixel_decoder
    decoder.__class__ = type('CustomPixelDecoder', (type(decoder), ), {})
    assert 'pixel decoder' in deployment.predict_refusal(model)
    with pytest.raises(deployment.ExportError, match='pixel decoder'):
        deployment.predict_module(model)


MASK2FORMER = 'mask2former_transnext-micro_shapes-128.py'


def mask2former_model():
    """The Mask2Former demo model (one block per stage) with the class and mask embeddings
    redrawn: with the initial weights every query prefers the same class and the label map is
    that class everywhere, which would check nothing; these give maps of two or three classes
    (larger mask weights saturate the sigmoids into exact ties that either side may break)."""
    torch.manual_seed(0)
    model = shallow_demo_model(MASK2FORMER)
    model.init_weights()
    head = model.decode_head
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.cls_embed.weight.normal_(0, 2, generator=generator)
        head.mask_embed[-1].weight.normal_(0, 0.2, generator=generator)
    return model.eval()


def test_mask2former_rewrite_matches_encode_decode():
    """The rewritten head (level shapes as ints, deformable attention by grid sampling) gives
    the class logits of mmseg's ``encode_decode``, at the demo size and at an odd one."""
    from mmtransnext.deployment.segmentors import Mask2FormerPredict
    model = mask2former_model()
    predict = deployment.predict_module(model)
    assert isinstance(predict, Mask2FormerPredict)
    for seed, (height, width) in enumerate([SIZE, (96, 136)]):
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
        meta = dict(img_shape=(height, width), ori_shape=(height, width),
                    pad_shape=(height, width), batch_input_shape=(height, width))
        with torch.no_grad():
            expected = model.encode_decode(x, [meta])
            torch.testing.assert_close(predict.logits(x), expected)
    with torch.no_grad():  # the label map: the arg-max of those scores
        label_map = predict(x)
    assert label_map.dtype == torch.int64 and label_map.shape == (1, 1, height, width)
    assert label_map.tolist() == expected.argmax(dim=1, keepdim=True).tolist()


@pytest.mark.slow
def test_mask2former_onnx_matches_predict(tmp_path):
    """Mask2Former on TransNeXt, image in, label map out: onnxruntime's map is mmseg's
    ``predict``'s at every pixel whose two best classes are not tied within rounding (all of
    them on these inputs), standard operators only (deformable attention as ``GridSample``)."""
    model = mask2former_model()
    path = str(tmp_path / 'mask2former.onnx')
    result = deployment.export(model, path, SIZE, part='predict', optimize=False)
    assert result.output_names == ['output']
    standard_ops_only(path)
    import onnx
    assert 'GridSample' in {n.op_type for n in onnx.load(path).graph.node}
    session = deployment.onnx_session(path)
    for seed in (1, 2):
        x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(seed))
        outputs = deployment.run_onnx(session, x)
        assert outputs[0].shape == (1, 1) + SIZE and outputs[0].dtype == torch.int64
        reference = deployment.reference_predictions(model, x)
        expected = reference.pred_sem_seg.data[0]
        assert torch.bincount(expected.flatten()).topk(2).values[1] > 100  # boundaries
        scores = reference.seg_logits.data.topk(2, dim=0).values
        clear = scores[0] - scores[1] > 1e-4 * scores[0].max()
        assert (outputs[0][0, 0] == expected)[clear].all()
        figures = deployment.compare_predictions(outputs, reference)
        assert figures['pixel_agreement'] > 0.999 and figures['miou'] > 0.99
