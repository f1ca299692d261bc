"""A multi-layer perceptron: fast enough to train many audit references on a laptop CPU."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] x depth -> Linear."""

    def __init__(
        self, *, in_features: int, num_classes: int, hidden: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: tuple[int, ...] | list[int] = (512, 256),
    dropout: float = 0.0,
) -> MLP:
    """MLP over the flattened input; ``hidden`` lists the hidden layer widths."""
    return MLP(
        in_features=math.prod(input_shape),
        num_classes=num_classes,
        hidden=tuple(int(h) for h in hidden),
        dropout=float(dropout),
    )
