"""Images in and out of the analysis tools: files and demo images as model input, figures as
small PNGs."""
from typing import Optional, Sequence, Tuple

import torch

from .config import is_tta_model
from .errors import ToolError
from .paths import check_file

#: Normalisation when a config has no ``data_preprocessor`` (ImageNet, RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def input_normalization(cfg) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Mean and std (per channel, in the model's channel order) of the config's
    ``data_preprocessor``, and whether the model takes RGB (else BGR) images."""
    model = cfg.get('model') or {}
    if is_tta_model(model):
        model = model.get('module', {})
    pre = model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = pre.get('mean', IMAGENET_MEAN)
    std = pre.get('std', IMAGENET_STD)
    rgb = bool(pre.get('bgr_to_rgb', 'mean' not in pre)) and not pre.get('rgb_to_bgr', False)
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), rgb)


def image_tensor(image_rgb, cfg) -> torch.Tensor:
    """An RGB uint8 ``(H, W, 3)`` array as the config's model input ``(1, 3, H, W)``."""
    mean, std, rgb = input_normalization(cfg)
    array = image_rgb if rgb else image_rgb[..., ::-1]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float()
    return (tensor - mean) / std


def read_image(path: str, size: Optional[Sequence[int]] = None):
    """An image file as an RGB uint8 array, resized to ``size`` (H, W) if given."""
    import cv2
    check_file(path, 'image file')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ToolError(f'not a readable image: {path}')
    return resize_image(image[..., ::-1], size)


def resize_image(image_rgb, size: Optional[Sequence[int]]):
    """``image_rgb`` resized (bilinear) to ``size`` (H, W); unchanged when ``size`` is None."""
    import cv2
    if size is None or tuple(size) == image_rgb.shape[:2]:
        return image_rgb
    return cv2.resize(image_rgb, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def demo_image(index: int, size: Optional[Sequence[int]] = None):
    """Validation image ``index`` of the bundled demo data (generated in memory)."""
    # imported here: the datasets package registers its classes in mmdet, mmseg and mmpretrain
    from ..datasets.synthetic import ShapesSpec, make_scene
    return resize_image(make_scene(ShapesSpec(), 'val', index)[0], size)


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG of at most 256 colours (a few times smaller than
    full colour, with no visible change for plots) and close it."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert('RGB')
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
