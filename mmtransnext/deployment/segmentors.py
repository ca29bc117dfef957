"""Whole segmentors as graphs: image in, the ``(1, 1, H, W)`` int64 label map out (mmdeploy's
segmentation output with ``with_argmax``), with mmseg's resize of the logits to the input and
the per-pixel arg-max inside the graph."""
from torch import Tensor, nn


class SegmentorPredict(nn.Module):
    """``encode_decode`` of an mmseg segmentor (logits resized to the input), then the class of
    each pixel: arg-max over classes, or the decode head's threshold on the sigmoid for a
    one-channel head, as ``postprocess_result`` does."""

    output_names = ['output']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, 'encode_decode'):
            raise TypeError(f'{type(model).__name__} is not an mmseg encoder-decoder')
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2], x.shape[3]
        metas = [dict(img_shape=(height, width), ori_shape=(height, width),
                      pad_shape=(height, width), batch_input_shape=(height, width))
                 for _ in range(x.shape[0])]
        logits = self.model.encode_decode(x, metas)
        if logits.shape[1] > 1:
            return logits.argmax(dim=1, keepdim=True)
        return (logits.sigmoid() > self.model.decode_head.threshold).long()
