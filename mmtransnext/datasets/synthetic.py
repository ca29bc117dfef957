"""Small generated datasets in real formats, for the demo and the tests (no download).

Scenes of coloured squares, circles and triangles on a smooth noisy background, written as

- ``shapes_coco``: COCO instance segmentation (``annotations/instances_{train,val}.json`` with
  polygon masks, ``train/*.jpg``, ``val/*.jpg``), read by mmdet's ``CocoDataset``;
- ``shapes_ade``: ADE20K-style semantic segmentation (``images/{training,validation}/*.jpg``
  and ``annotations/{training,validation}/*.png``; label 0 is "unlabelled" and is dropped by
  ``reduce_zero_label``, 1 is the background, 2-4 the shapes), read by mmseg's datasets;
- ``shapes_cls``: image classification in ImageNet's folder layout (``{train,val}/<class>/
  *.jpg``), one shape per image, read by mmpretrain's ``CustomDataset``.

Shapes are drawn with the masks pycocotools decodes from their polygons, so image, instance
masks and label maps agree pixel for pixel. Every image is a function of ``(seed, split,
index)`` only, so a set is the same on every machine and run. A set is written into a temporary
directory and renamed into place with a ``manifest.json`` describing it, so concurrent first
uses (several training processes) are safe and a half-written set is never mistaken for a
complete one. A generated set made with other settings (or an older generator) is replaced; a
directory without a manifest is never touched.

    python -m mmtransnext.datasets.synthetic --root data/generated   # both sets, defaults
"""
import argparse
import json
import os
import os.path as osp
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

#: Bump when the images or annotations change, so old sets are detected as different.
GENERATOR_VERSION = 2

SHAPE_CLASSES: Tuple[str, ...] = ('square', 'circle', 'triangle')
#: Semantic classes of ``shapes_ade`` after ``reduce_zero_label`` (file label - 1).
SEG_CLASSES: Tuple[str, ...] = ('background', ) + SHAPE_CLASSES
#: Base colour of each shape class (RGB); every instance is jittered around it.
SHAPE_COLOURS: Tuple[Tuple[int, int, int], ...] = ((220, 60, 50), (60, 190, 80), (60, 110, 230))
SEG_PALETTE: Tuple[Tuple[int, int, int], ...] = ((128, 128, 128), ) + SHAPE_COLOURS

DEFAULT_ROOT = osp.join('data', 'generated')
MANIFEST = 'manifest.json'
SPLITS = ('train', 'val')


@dataclass(frozen=True)
class ShapesSpec:
    """What a generated set contains; stored in its manifest.

    Args:
        num_train: images in the training split.
        num_val: images in the validation split.
        img_size: side of the square images in pixels.
        max_shapes: most shapes per image (at least one).
        seed: base seed; image ``i`` of split ``s`` uses ``(seed, s, i)``.
    """
    num_train: int = 300
    num_val: int = 50
    img_size: int = 128
    max_shapes: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f'num_train and num_val must be >= 1, got {self.num_train}, '
                             f'{self.num_val}')
        if self.img_size < 32:
            raise ValueError(f'img_size must be >= 32, got {self.img_size}')
        if self.max_shapes < 1:
            raise ValueError(f'max_shapes must be >= 1, got {self.max_shapes}')

    def count(self, split: str) -> int:
        return self.num_train if split == 'train' else self.num_val


@dataclass
class Shape:
    """One instance: its class index (into :data:`SHAPE_CLASSES`) and outline polygon."""
    label: int
    polygon: np.ndarray  # (N, 2) float x, y

    @property
    def bbox(self) -> List[float]:
        """COCO ``[x, y, w, h]`` of the polygon."""
        x0, y0 = self.polygon.min(0)
        x1, y1 = self.polygon.max(0)
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _outline(label: int, centre: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon of a shape whose circumscribed circle has diameter ``size``."""
    radius = size / 2
    if label == 0:  # square, tilted by up to 20 degrees
        angles = np.deg2rad(rng.uniform(-20, 20)) + np.pi / 4 + np.arange(4) * np.pi / 2
    elif label == 1:  # circle
        angles = np.arange(32) * 2 * np.pi / 32
    else:  # equilateral triangle, any orientation
        angles = rng.uniform(0, 2 * np.pi / 3) + np.arange(3) * 2 * np.pi / 3
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth muted colour field plus pixel noise, (size, size, 3) float RGB."""
    coarse = rng.uniform(70, 170, size=(4, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field + rng.normal(0, 6, size=field.shape).astype(np.float32)


def make_scene(spec: ShapesSpec, split: str, index: int) -> Tuple[np.ndarray, List[Shape]]:
    """Image ``index`` of ``split``: an RGB uint8 array and its non-overlapping shapes."""
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
    size = spec.img_size
    image = _background(size, rng)
    shapes: List[Shape] = []
    boxes: List[Tuple[float, float, float, float]] = []
    wanted = int(rng.integers(1, spec.max_shapes + 1))
    for _ in range(50 * wanted):
        if len(shapes) == wanted:
            break
        diameter = rng.uniform(0.18, 0.42) * size
        margin = diameter / 2 + 2
        centre = rng.uniform(margin, size - margin, size=2)
        box = (centre[0] - margin, centre[1] - margin, centre[0] + margin, centre[1] + margin)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in boxes):
            continue
        label = int(rng.integers(len(SHAPE_CLASSES)))
        polygon = np.round(_outline(label, centre, diameter, rng), 2)
        colour = np.clip(np.array(SHAPE_COLOURS[label]) + rng.integers(-25, 26, size=3), 0, 255)
        mask = rasterize(polygon, size, size)
        image[mask] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
        shapes.append(Shape(label, polygon))
        boxes.append(box)
    return np.clip(image, 0, 255).astype(np.uint8), shapes


def rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean mask of ``polygon`` exactly as COCO tools decode it (pycocotools), so that the
    drawn image, the instance masks and the label maps agree pixel for pixel."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(rle)[..., 0].astype(bool)


def _write_image(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, image_rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f'could not write {path}')


def _write_coco(tmp: str, spec: ShapesSpec) -> None:
    os.makedirs(osp.join(tmp, 'annotations'))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(SHAPE_CLASSES)]
    for split in SPLITS:
        os.makedirs(osp.join(tmp, split))
        images, annotations = [], []
        for index in range(spec.count(split)):
            image, shapes = make_scene(spec, split, index)
            file_name = f'{index:06d}.jpg'
            _write_image(osp.join(tmp, split, file_name), image)
            image_id = index + 1
            images.append(dict(id=image_id, file_name=file_name, height=spec.img_size,
                               width=spec.img_size))
            for shape in shapes:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id, category_id=shape.label + 1,
                    bbox=[round(v, 2) for v in shape.bbox],
                    area=float(rasterize(shape.polygon, spec.img_size, spec.img_size).sum()),
                    segmentation=[shape.polygon.reshape(-1).tolist()], iscrowd=0))
        with open(osp.join(tmp, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def _write_ade(tmp: str, spec: ShapesSpec) -> None:
    for split, folder in zip(SPLITS, ('training', 'validation')):
        os.makedirs(osp.join(tmp, 'images', folder))
        os.makedirs(osp.join(tmp, 'annotations', folder))
        for index in range(spec.count(split)):
            image, shapes = make_scene(spec, split, index)
            label = np.ones(image.shape[:2], np.uint8)  # 1 = background
            for shape in shapes:
                label[rasterize(shape.polygon, *label.shape)] = shape.label + 2
            _write_image(osp.join(tmp, 'images', folder, f'{index:06d}.jpg'), image)
            if not cv2.imwrite(osp.join(tmp, 'annotations', folder, f'{index:06d}.png'), label):
                raise OSError(f'could not write a label map under {tmp}')


def make_crop(spec: ShapesSpec, split: str, index: int) -> Tuple[np.ndarray, int]:
    """Image ``index`` of ``split`` of the classification set: one shape of random size and
    position filling much of the image, coloured as the detection set colours its class
    (jittered), and its class (index into :data:`SHAPE_CLASSES`)."""
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, len(SHAPE_CLASSES)])
    size = spec.img_size
    image = _background(size, rng)
    label = index % len(SHAPE_CLASSES)  # balanced classes
    diameter = rng.uniform(0.45, 0.85) * size
    centre = rng.uniform(diameter / 2 + 1, size - diameter / 2 - 1, size=2)
    polygon = _outline(label, centre, diameter, rng)
    mask = rasterize(polygon, size, size)
    colour = np.array(SHAPE_COLOURS[label]) + rng.integers(-40, 41, size=3)
    image[mask] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write_cls(tmp: str, spec: ShapesSpec) -> None:
    for split in SPLITS:
        for name in SHAPE_CLASSES:
            os.makedirs(osp.join(tmp, split, name))
        for index in range(spec.count(split)):
            image, label = make_crop(spec, split, index)
            _write_image(osp.join(tmp, split, SHAPE_CLASSES[label], f'{index:06d}.jpg'), image)


WRITERS: Dict[str, Callable[[str, ShapesSpec], None]] = dict(shapes_coco=_write_coco,
                                                            shapes_ade=_write_ade,
                                                            shapes_cls=_write_cls)


def _manifest(kind: str, spec: ShapesSpec) -> dict:
    return dict(kind=kind, version=GENERATOR_VERSION, **asdict(spec))


def _read_manifest(root: str) -> Optional[dict]:
    try:
        with open(osp.join(root, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_generated(root: str, kind: str, **spec_kwargs) -> str:
    """Generate the ``kind`` set (see :data:`WRITERS`) at ``root`` unless it is already there.

    Args:
        root: directory of the set (created with its parents).
        kind: 'shapes_coco' or 'shapes_ade'.
        **spec_kwargs: fields of :class:`ShapesSpec`.

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists but is not a generated set (no manifest); it is never
            overwritten.
    """
    if kind not in WRITERS:
        raise ValueError(f'unknown generated dataset kind {kind!r}; choose from {sorted(WRITERS)}')
    spec = ShapesSpec(**spec_kwargs)
    wanted = _manifest(kind, spec)
    root = osp.normpath(root)
    found = _read_manifest(root) if osp.exists(root) else None
    if found == wanted:
        return root
    if osp.exists(root) and (not isinstance(found, dict) or found.get('kind') not in WRITERS):
        raise FileExistsError(f'{root} exists and is not a generated dataset (no {MANIFEST}); '
                              f'remove it or choose another data_root')
    parent = osp.dirname(osp.abspath(root))
    os.makedirs(parent, exist_ok=True)
    base = osp.join(parent, f'.{osp.basename(osp.abspath(root))}')
    tmp, old = f'{base}.tmp-{os.getpid()}', f'{base}.old-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        WRITERS[kind](tmp, spec)
        with open(osp.join(tmp, MANIFEST), 'w') as f:
            json.dump(wanted, f, indent=1)
        if found is not None:  # another generated set: replace it
            os.rename(root, old)
        os.rename(tmp, root)
    except OSError:
        if _read_manifest(root) == wanted:  # another process finished first
            return root
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


def ensure_shapes_coco(root: str = osp.join(DEFAULT_ROOT, 'shapes_coco'), **spec_kwargs) -> str:
    """The COCO-format shapes set at ``root`` (generated on first use); returns ``root``."""
    return ensure_generated(root, 'shapes_coco', **spec_kwargs)


def ensure_shapes_ade(root: str = osp.join(DEFAULT_ROOT, 'shapes_ade'), **spec_kwargs) -> str:
    """The ADE20K-format shapes set at ``root`` (generated on first use); returns ``root``."""
    return ensure_generated(root, 'shapes_ade', **spec_kwargs)


def ensure_shapes_cls(root: str = osp.join(DEFAULT_ROOT, 'shapes_cls'), **spec_kwargs) -> str:
    """The classification shapes set at ``root`` (generated on first use); returns ``root``."""
    return ensure_generated(root, 'shapes_cls', **spec_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description='Generate the bundled toy datasets.')
    parser.add_argument('--root', default=DEFAULT_ROOT,
                        help='parent directory of shapes_coco/ and shapes_ade/')
    parser.add_argument('--kind', nargs='+', default=sorted(WRITERS), choices=sorted(WRITERS))
    for name, default in asdict(ShapesSpec()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args()
    spec = {name: getattr(args, name) for name in asdict(ShapesSpec())}
    for kind in args.kind:
        print(ensure_generated(osp.join(args.root, kind), kind, **spec))


if __name__ == '__main__':
    main()
