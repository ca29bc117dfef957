"""Convolutional GLU, TransNeXt's channel mixer."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops.budget import element_budget


class DWConv(nn.Module):
    """3x3 depthwise convolution over a token sequence laid out as an ``H x W`` map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        """The official layout round trip: ``(B, N, C)`` -> contiguous NCHW -> ``(B, N, C)``."""
        batch, _, channels = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, channels, *size).contiguous())
        return x.flatten(2).transpose(1, 2)

    def forward_tokens(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        """Same numbers without copies: a contiguous ``(B, N, C)`` sequence *is* a channels-last
        ``(B, C, H, W)`` map, and the convolution keeps that layout, so both reshapes are views."""
        batch, length, channels = x.shape
        grid = x.view(batch, size[0], size[1], channels).permute(0, 3, 1, 2)
        return self.dwconv(grid).permute(0, 2, 3, 1).reshape(batch, length, channels)


#: Elements of one band's hidden-width tensors in :meth:`ConvGLU.forward_bands` on CPU (8 MB in
#: float32); on a GPU a band is a share of its memory (:mod:`mmtransnext.ops.budget`).
BAND_ELEMENTS = 1 << 21


class _GeluGateLinear(torch.autograd.Function):
    """``fc2(GELU(conv) * value)`` that saves only ``conv`` and ``value`` for backward (GELU
    and the product are recomputed, two cheap elementwise passes) instead of the four
    hidden-width tensors autograd would keep."""

    @staticmethod
    def forward(ctx, conv: Tensor, value: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(conv, value, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(F.gelu(conv) * value, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        conv, value, weight = ctx.saved_tensors
        dtype = grad_out.dtype  # under autocast the forward ran in a lower precision
        gelu = F.gelu(conv)
        grad_hidden = grad_out @ weight.to(dtype)
        grad_weight = grad_bias = None
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[2]:
            grad_weight = (flat_grad.t() @ (gelu * value).reshape(-1, value.shape[-1]).to(
                dtype)).to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = flat_grad.sum(0).to(ctx.bias_dtype)
        grad_value = (grad_hidden * gelu).to(value.dtype) if ctx.needs_input_grad[1] else None
        grad_conv = None
        if ctx.needs_input_grad[0]:
            grad_conv = torch.ops.aten.gelu_backward((grad_hidden * value).to(conv.dtype), conv)
        return grad_conv, grad_value, grad_weight, grad_bias


class ConvGLU(nn.Module):
    """Gated linear unit whose gate passes through a 3x3 depthwise conv (a per-token position
    cue) and GELU: ``fc2(GELU(dwconv(gate)) * value)`` with ``gate, value = fc1(x).chunk(2)``.

    Args:
        in_features: input (and output) channels.
        hidden_features: nominal hidden width ``dim * mlp_ratio``; the real gate/value width is
            ``int(2 * hidden_features / 3)`` so the parameter count matches a plain MLP's.
        drop: dropout after the gating and after ``fc2``.
        fast: compute gate and value as two contiguous projections, convolve them channels-last
            (no layout copies), work in place without gradients and save only two hidden-width
            tensors for backward. False runs the official sequence of operations. Same numbers
            and parameters either way.
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.,
                 fast: bool = True) -> None:
        super().__init__()
        hidden = int(2 * hidden_features / 3)
        self.hidden = hidden
        self.fc1 = nn.Linear(in_features, hidden * 2)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, in_features)
        self.drop = nn.Dropout(drop)
        self.fast = fast

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        """``(B, H*W, C)`` tokens -> ``(B, H*W, C)``."""
        if not self.fast:
            return self.forward_reference(x, size)
        if not torch.is_grad_enabled() and not (self.training and self.drop.p > 0):
            return self.forward_bands(x, size)
        hidden, weight, bias = self.hidden, self.fc1.weight, self.fc1.bias
        gate = F.linear(x.contiguous(), weight[:hidden],
                        None if bias is None else bias[:hidden])
        conv = self.dwconv.forward_tokens(gate, size)
        del gate
        value = F.linear(x, weight[hidden:], None if bias is None else bias[hidden:])
        if self.training and self.drop.p > 0:
            return self.drop(self.fc2(self.drop(F.gelu(conv) * value)))
        return _GeluGateLinear.apply(conv, value, self.fc2.weight, self.fc2.bias)

    def forward_bands(self, x: Tensor, size: Tuple[int, int],
                      budget: Optional[int] = None) -> Tensor:
        """Inference in bands of rows, each with a one-row halo for the 3x3 conv, so that the
        hidden-width tensors never exist for the whole map (same numbers; the halo rows' gate
        projection is computed twice). Bands of ``budget`` hidden-width elements, by default
        sized for the device (:func:`mmtransnext.ops.budget.element_budget`)."""
        batch, length, _ = x.shape
        height, width = size
        hidden, weight, bias = self.hidden, self.fc1.weight, self.fc1.bias
        gate_w, value_w = weight[:hidden], weight[hidden:]
        gate_b = None if bias is None else bias[:hidden]
        value_b = None if bias is None else bias[hidden:]
        conv = self.dwconv.dwconv
        if budget is None:
            budget = element_budget(x.device, BAND_ELEMENTS, buffers=3)
        rows = height if budget is None else max(1, budget // max(1, batch * width * hidden))
        grid = x.reshape(batch, height, width, x.shape[-1])
        out = x.new_empty(batch, height, width, self.fc2.out_features)
        for y0 in range(0, height, rows):
            y1 = min(height, y0 + rows)
            lo, hi = max(0, y0 - 1), min(height, y1 + 1)
            gate = F.linear(grid[:, lo:hi], gate_w, gate_b)  # (B, rows + halo, W, hidden)
            # (B, rows, W, hidden) memory is a channels-last map: the conv reads and writes it.
            # Its zero padding is the map's own border wherever the band has no halo row, and
            # only the halo rows' outputs (dropped) see padding inside the map.
            hidden_out = F.conv2d(gate.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=1,
                                  groups=hidden).permute(0, 2, 3, 1)[:, y0 - lo:y1 - lo]
            del gate
            hidden_out = torch.ops.aten.gelu_(hidden_out)
            hidden_out.mul_(F.linear(grid[:, y0:y1], value_w, value_b))
            out[:, y0:y1] = self.fc2(hidden_out)
            del hidden_out
        return out.view(batch, length, -1)

    def forward_reference(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        """The official computation."""
        gate, value = self.fc1(x).chunk(2, dim=-1)
        x = self.drop(self.act(self.dwconv(gate, size)) * value)
        return self.drop(self.fc2(x))
