"""Tokenisation for text inputs, with the HuggingFace ``tokenizers`` library.

For built-in models ``unforget train`` fits a WordPiece tokenizer on the training split and
stores its JSON in the checkpoint metadata (``unforget.tokenizer``), so ``apply`` and ``audit``
need nothing beside the checkpoint. Id 0 is ``[PAD]`` and id 1 ``[UNK]``: the text model masks
padding, and unseen words map to ``[UNK]`` instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from unforget.checkpoint import KEY_TOKENIZER, Checkpoint
from unforget.errors import CheckpointError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from unforget.data import Split

SPECIAL = ("[PAD]", "[UNK]")


@dataclass(frozen=True)
class TextEncoder:
    """Callable: list of strings -> (B, max_length) int64 ids, 0-padded and truncated."""

    tokenizer: Tokenizer
    max_length: int

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for i, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            ids = encoding.ids[: self.max_length]
            out[i, : len(ids)] = ids
        return out

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def to_json(self) -> str:
        return str(self.tokenizer.to_str())


def fit_tokenizer(split: Split, column: str, *, vocab_size: int, max_length: int) -> TextEncoder:
    """Train a lower-cased WordPiece tokenizer on ``column`` of ``split`` (streamed in chunks)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL))
    tokenizer.train_from_iterator(_texts(split, column), trainer=trainer, length=len(split))
    return TextEncoder(tokenizer=tokenizer, max_length=max_length)


def encoder_from_json(text: str, *, max_length: int) -> TextEncoder:
    from tokenizers import Tokenizer

    return TextEncoder(tokenizer=Tokenizer.from_str(text), max_length=max_length)


def encoder_from_checkpoint(checkpoint: Checkpoint, *, max_length: int) -> TextEncoder:
    """The tokenizer stored in a checkpoint's metadata.

    Raises:
        CheckpointError: text data but no (or an unreadable) tokenizer in the checkpoint.
    """
    raw = checkpoint.metadata.get(KEY_TOKENIZER)
    if not raw:
        raise CheckpointError(f"{checkpoint.path} has text inputs but no tokenizer in its "
                              "metadata; train it with `unforget train`")
    try:
        return encoder_from_json(raw, max_length=max_length)
    except Exception as exc:  # tokenizers raises its own Exception type
        raise CheckpointError(f"{checkpoint.path}: stored tokenizer is unreadable ({exc})") from exc


def _texts(split: Split, column: str, chunk: int = 2048) -> Iterator[list[str]]:
    table = split.dataset.data.table
    for start in range(0, table.num_rows, chunk):
        yield [str(t) for t in table.column(column).slice(start, chunk).to_pylist()]
