"""The generated toy datasets: deterministic, real formats, consistent annotations."""
import hashlib
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from mmtransnext.datasets import (SEG_CLASSES, SHAPE_CLASSES, ShapesSpec, ensure_generated,
                                  ensure_shapes_ade, ensure_shapes_coco)
from mmtransnext.datasets.synthetic import make_scene, rasterize

SMALL = dict(num_train=6, num_val=3, img_size=64)


def _digest(root: str) -> str:
    h = hashlib.sha1()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(osp.relpath(osp.join(folder, name), root).encode())
            with open(osp.join(folder, name), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize('ensure', [ensure_shapes_coco, ensure_shapes_ade])
def test_same_files_every_time(ensure, tmp_path):
    a = ensure(str(tmp_path / 'a'), **SMALL)
    b = ensure(str(tmp_path / 'b'), **SMALL)
    assert _digest(a) == _digest(b)
    c = ensure(str(tmp_path / 'c'), **dict(SMALL, seed=1))
    assert _digest(a) != _digest(c)


def test_existing_set_is_kept_another_replaced_and_foreign_dirs_refused(tmp_path):
    root = ensure_shapes_coco(str(tmp_path / 'set'), **SMALL)
    stamp = os.stat(osp.join(root, 'manifest.json')).st_mtime_ns
    digest = _digest(root)
    assert ensure_shapes_coco(root, **SMALL) == root
    assert os.stat(osp.join(root, 'manifest.json')).st_mtime_ns == stamp
    ensure_shapes_coco(root, **dict(SMALL, num_train=7))  # other settings: replaced
    assert len(os.listdir(osp.join(root, 'train'))) == 7 and _digest(root) != digest
    ensure_shapes_coco(root, **SMALL)
    assert _digest(root) == digest
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'keep.txt').write_text('user data')
    with pytest.raises(FileExistsError, match='is not a generated dataset'):
        ensure_shapes_coco(str(tmp_path / 'mine'), **SMALL)
    assert (tmp_path / 'mine' / 'keep.txt').read_text() == 'user data'
    assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p or '.old-' in p]


def test_bad_spec_and_kind_are_refused(tmp_path):
    with pytest.raises(ValueError, match='img_size'):
        ShapesSpec(img_size=16)
    with pytest.raises(ValueError, match='unknown generated dataset kind'):
        ensure_generated(str(tmp_path / 'x'), 'shapes_voc')


def test_coco_annotations_describe_the_images(tmp_path):
    from pycocotools.coco import COCO
    root = ensure_shapes_coco(str(tmp_path / 'coco'), **SMALL)
    coco = COCO(osp.join(root, 'annotations', 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert len(coco.getImgIds()) == 6
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        image = cv2.imread(osp.join(root, 'train', info['file_name']))
        assert image.shape == (64, 64, 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= ShapesSpec().max_shapes
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(mask)
            # the mask lies in its box (1 px of rasterisation slack) and fills it
            assert xs.min() >= x - 1 and xs.max() <= x + w + 1
            assert ys.min() >= y - 1 and ys.max() <= y + h + 1
            assert mask.sum() == ann['area']
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64


def test_ade_labels_match_the_scenes(tmp_path):
    root = ensure_shapes_ade(str(tmp_path / 'ade'), **SMALL)
    spec = ShapesSpec(**SMALL)
    for split, folder in (('train', 'training'), ('val', 'validation')):
        names = sorted(os.listdir(osp.join(root, 'annotations', folder)))
        assert len(names) == spec.count(split)
        for index, name in enumerate(names):
            label = cv2.imread(osp.join(root, 'annotations', folder, name), cv2.IMREAD_UNCHANGED)
            _, shapes = make_scene(spec, split, index)
            expected = np.ones((64, 64), np.uint8)
            for shape in shapes:
                expected[rasterize(shape.polygon, 64, 64)] = shape.label + 2
            assert np.array_equal(label, expected)
            assert set(np.unique(label)) <= set(range(1, len(SEG_CLASSES) + 1))


def test_class_colours_tell_shapes_apart():
    spec = ShapesSpec(img_size=128)
    means = {label: [] for label in range(len(SHAPE_CLASSES))}
    for index in range(20):
        image, shapes = make_scene(spec, 'train', index)
        for shape in shapes:
            means[shape.label].append(image[rasterize(shape.polygon, 128, 128)].mean(0))
    centres = np.array([np.mean(means[label], 0) for label in means])
    # each class is brightest in its own channel (red squares, green circles, blue triangles)
    assert list(centres.argmax(1)) == [0, 1, 2]


def test_manifest_records_the_spec(tmp_path):
    root = ensure_shapes_ade(str(tmp_path / 'ade'), **SMALL)
    with open(osp.join(root, 'manifest.json')) as f:
        manifest = json.load(f)
    assert manifest == dict(kind='shapes_ade', version=2, num_train=6, num_val=3, img_size=64,
                            max_shapes=4, seed=0)
