"""Tiny backbones for fast end-to-end tests: ``--backbone tests.tiny_models:tinynet``.

Two convolution blocks and a linear head (``fc``); its layer groups are ``stem``, ``block``, ``head``.
It trains to a useful accuracy on the 16-32 px digits in a few seconds on a CPU.

Example:
    >>> import torch
    >>> tinynet(num_classes=3)(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["TinyNet", "tinynet"]


class ConvBlock(nn.Module):
    """3x3 convolution, BatchNorm, ReLU (a custom module, so it forms one layer group)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).relu()


class TinyNet(nn.Module):
    """stem (3->w) -> block (w->2w) -> global average pool -> fc."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 8) -> None:
        super().__init__()
        self.stem = ConvBlock(in_chans, width, 1)
        self.block = ConvBlock(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


def tinynet(num_classes: int = 10, in_chans: int = 3, width: int = 8) -> TinyNet:
    """A :class:`TinyNet` with random weights."""
    return TinyNet(num_classes=num_classes, in_chans=in_chans, width=width)
