"""Convolutional GLU, TransNeXt's channel mixer."""
from typing import Tuple

from torch import Tensor, nn


class DWConv(nn.Module):
    """3x3 depthwise convolution over a token sequence laid out as an ``H x W`` map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        batch, _, channels = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, channels, *size))
        return x.flatten(2).transpose(1, 2)


class ConvGLU(nn.Module):
    """Gated linear unit whose gate passes through a 3x3 depthwise conv (a per-token position
    cue) and GELU: ``fc2(GELU(dwconv(gate)) * value)`` with ``gate, value = fc1(x).chunk(2)``.

    Args:
        in_features: input (and output) channels.
        hidden_features: nominal hidden width ``dim * mlp_ratio``; the real gate/value width is
            ``int(2 * hidden_features / 3)`` so the parameter count matches a plain MLP's.
        drop: dropout after the gating and after ``fc2``.
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.) -> None:
        super().__init__()
        hidden = int(2 * hidden_features / 3)
        self.fc1 = nn.Linear(in_features, hidden * 2)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        x = self.drop(self.act(self.dwconv(gate, size)) * value)
        return self.drop(self.fc2(x))
