"""A small text classifier over token ids (embeddings + a light Transformer encoder).

Token id 0 is padding (see :mod:`unforget.data.text`); the model masks it out of attention and of
the mean pooling. A row with no tokens at all (an empty string) would leave attention nothing
to attend to, and PyTorch's fused eval path then returns NaN; such rows attend to their first
position instead, so they get a finite, input-independent prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from unforget.errors import SpecError

PAD_ID = 0


class TextClassifier(nn.Module):
    """Token ids ``(B, L)`` with ``L <= max_length`` -> logits ``(B, num_classes)``.

    Pre-norm Transformer encoder, masked mean pooling, LayerNorm, linear head. Embeddings start
    small (std 0.02, as in BERT) so that at initialisation the position signal does not drown
    the word signal and the first updates stay well scaled.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int,
        dim: int,
        layers: int,
        heads: int,
        max_length: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        if x.shape[1] > self.max_length:
            raise ValueError(
                f"text model: {x.shape[1]} tokens per sample, but it was built "
                f"for at most {self.max_length} (data.max_length)"
            )
        pad = x.eq(PAD_ID)
        pad[:, 0] &= ~pad.all(dim=1)  # empty rows attend to position 0 (see module docstring)
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.dropout(self.embed(x) + self.position(positions)[None])
        h = self.encoder(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (self.norm(h) * keep).sum(1) / keep.sum(1)
        return self.head(pooled)


def build(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int = 8000,
    dim: int = 128,
    layers: int = 2,
    heads: int = 4,
    dropout: float = 0.1,
) -> TextClassifier:
    """Text classifier; ``input_shape`` is ``(max_length,)``.

    ``vocab_size`` is overwritten by ``unforget train`` with the fitted tokenizer's size, so
    the embedding table has exactly one row per token id. ``dim`` must divide by ``heads``.

    Raises:
        SpecError: inconsistent sizes.
    """
    if len(input_shape) != 1:
        raise SpecError(f"text model needs input_shape (max_length,), got {input_shape}")
    if int(dim) % int(heads):
        raise SpecError(f"text model: dim {dim} is not divisible by heads {heads}")
    return TextClassifier(
        vocab_size=int(vocab_size),
        num_classes=num_classes,
        dim=int(dim),
        layers=int(layers),
        heads=int(heads),
        max_length=int(input_shape[0]),
        dropout=float(dropout),
    )
