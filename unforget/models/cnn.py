"""A small convolutional network for 28x28 to 32x32 images (trains in seconds per epoch)."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-Pool x 2 (x3 for >= 32 px), global average pool, linear head."""

    def __init__(self, *, channels: int, num_classes: int, width: int, size: int) -> None:
        super().__init__()
        blocks = [_block(channels, width), _block(width, 2 * width)]
        if size >= 32:
            blocks.append(_block(2 * width, 2 * width))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def build(*, input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> SmallCNN:
    """Small CNN; ``input_shape`` is (C, H, W)."""
    if len(input_shape) != 3:
        raise TypeError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
    return SmallCNN(
        channels=input_shape[0],
        num_classes=num_classes,
        width=int(width),
        size=min(input_shape[1:]),
    )
