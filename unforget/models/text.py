"""A small text classifier over token ids (embeddings + a light Transformer encoder).

Token id 0 is padding; the model masks it out of attention and of the mean pooling.
"""

from __future__ import annotations

import torch
from torch import nn


class TextClassifier(nn.Module):
    def __init__(self, *, vocab_size: int, num_classes: int, dim: int, layers: int, heads: int,
                 max_length: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(max_length, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        pad = x.eq(0)
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.embed(x) + self.position(positions)[None]
        h = self.encoder(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (self.norm(h) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(pooled)


def build(*, input_shape: tuple[int, ...], num_classes: int, vocab_size: int = 8000,
          dim: int = 128, layers: int = 2, heads: int = 4, dropout: float = 0.1) -> TextClassifier:
    """Text classifier; ``input_shape`` is (max_length,)."""
    return TextClassifier(vocab_size=int(vocab_size), num_classes=num_classes, dim=int(dim),
                          layers=int(layers), heads=int(heads), max_length=int(input_shape[0]),
                          dropout=float(dropout))
