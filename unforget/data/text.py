"""Tokenisation for text inputs, with the HuggingFace ``tokenizers`` library.

For built-in models ``unforget train`` learns a WordPiece vocabulary from the training rows
(deterministically: see :func:`fit_tokenizer`) and stores the tokenizer's JSON in the
checkpoint metadata (``unforget.tokenizer``), so ``apply`` and ``audit`` need nothing beside
the checkpoint. Id 0 is ``[PAD]`` and id 1 ``[UNK]``: the text model masks padding, and unseen
words map to ``[UNK]`` (or to pieces of known characters) instead of failing.

A pretrained model directory (see :mod:`unforget.models.hf`) brings its own ``tokenizer.json``;
:func:`training_encoder` uses that one instead of fitting a new vocabulary, because the
pretrained embeddings only mean something for the ids they were trained with. It is stored in
the checkpoint metadata the same way, so later commands read one place whatever its origin.

Batches are padded to the fixed ``max_length`` (the spec's ``data.max_length``) rather than to
the longest row of each batch: every batch then has the per-sample shape the spec records, so
methods may concatenate batches (∇τ joins a retain and a forget batch in one forward pass), and
for short review snippets the saving of dynamic padding would be small.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unforget.errors import CheckpointError, SpecError
from unforget.io.checkpoint import KEY_TOKENIZER, Checkpoint

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from unforget.config.spec import ModelSpec
    from unforget.data.splits import Split

SPECIAL = ("[PAD]", "[UNK]")
PAD_ID = 0  # padding of tokenizers that define no pad token (the built-in model's convention)
# Pad tokens of common tokenizer families, tried in order when tokenizer.json sets no padding.
_PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>", "<|pad|>")
_CHUNK = 2048  # rows per chunk when streaming text into the vocabulary counter
_CONT = "##"  # WordPiece continuation prefix
_MAX_WORD = 100  # longer "words" (URLs, noise) map to [UNK] and are not learnt from


@dataclass(frozen=True)
class TextEncoder:
    """Callable: list of strings -> ``(B, max_length)`` int64 ids, padded with ``pad_id``.

    ``None`` and empty strings encode to a row of padding (models must cope with it: the built-in
    one attends to the first position when a row has no tokens). The tokenizer is configured to
    truncate to ``max_length`` itself, so special tokens added by a pretrained tokenizer's
    post-processor (``[CLS] ... [SEP]``) survive truncation.
    """

    tokenizer: Tokenizer
    max_length: int
    pad_id: int = 0

    def __call__(self, texts: Sequence[str | None]) -> np.ndarray:
        out = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        if not texts:
            return out
        clean = ["" if t is None else str(t) for t in texts]
        for i, encoding in enumerate(self.tokenizer.encode_batch(clean)):
            ids = encoding.ids[: self.max_length]
            out[i, : len(ids)] = ids
        return out

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (added special tokens included)."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def to_json(self) -> str:
        """The tokenizer as the JSON string stored under ``unforget.tokenizer``."""
        return str(self.tokenizer.to_str())


def make_encoder(tokenizer: Tokenizer, *, max_length: int) -> TextEncoder:
    """Wrap ``tokenizer``: truncation to ``max_length``, right padding with its pad id.

    A pretrained tokenizer.json may pad to a fixed width or on the left; both are replaced by
    padding to the batch's longest row on the right, which :class:`TextEncoder` widens to
    ``max_length`` with the same id (absolute position embeddings expect text to start at 0).
    Keeping a padding setting, rather than none, records the pad id in the JSON stored in
    checkpoints, so it survives the round trip. A tokenizer with no pad token pads with id 0,
    which the built-in text model treats as padding.

    Raises:
        SpecError: ``max_length`` below 1.
    """
    if max_length < 1:
        raise SpecError(f"data.max_length must be >= 1 for text inputs (got {max_length})")
    pad = pad_id(tokenizer)
    if pad is None:
        tokenizer.no_padding()
        pad = PAD_ID
    else:
        token = tokenizer.id_to_token(pad) or SPECIAL[0]
        tokenizer.enable_padding(direction="right", pad_id=pad, pad_token=token)
    tokenizer.enable_truncation(max_length)
    return TextEncoder(tokenizer=tokenizer, max_length=max_length, pad_id=pad)


def pad_id(tokenizer: Tokenizer) -> int | None:
    """The id a tokenizer pads with: its padding setting, else a known pad token, else None.

    :mod:`unforget.models.hf` derives its attention mask from the same function, so the
    padding written by the encoder and the padding masked by the model always agree.
    """
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in _PAD_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return None


def fit_tokenizer(
    split: Split,
    column: str,
    *,
    vocab_size: int,
    max_length: int,
    rows: np.ndarray | None = None,
    min_frequency: int = 2,
) -> TextEncoder:
    """Learn a lower-cased WordPiece vocabulary on ``column`` of ``split`` (streamed in chunks).

    The vocabulary is learnt by :func:`learn_wordpiece` rather than by ``tokenizers``'
    ``WordPieceTrainer``, whose tie-breaking follows Rust hash-map order: it gives a different
    vocabulary on every run, so one spec and seed would not give one model.

    Args:
        split: the training split.
        column: its text column.
        vocab_size: upper bound on the vocabulary (a small corpus may yield fewer pieces).
        max_length: tokens per sample after truncation.
        rows: row positions to learn from (default: all). Exact retraining passes the retained
            rows, so no vocabulary entry exists only because of a forgotten sample.
        min_frequency: smallest count of a character or merged piece, a word counting once
            per row that contains it. With the default 2, a word found in one training row
            only never becomes a token of its own, so the vocabulary does not record the rare
            words of individual samples (not a strict bound: one row holding two similar rare
            words can still add a piece).

    Raises:
        SpecError: ``vocab_size`` too small to hold the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if vocab_size < 2 * len(SPECIAL):
        raise SpecError(
            f"model.kwargs.vocab_size must be at least {2 * len(SPECIAL)} (got {vocab_size})"
        )
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for chunk in _texts(split, column, rows):
        for text in chunk:
            words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
            counts.update({word for word, _ in words if len(word) <= _MAX_WORD})
    pieces = learn_wordpiece(
        counts, vocab_size=vocab_size - len(SPECIAL), min_frequency=min_frequency
    )
    vocab = {token: i for i, token in enumerate((*SPECIAL, *pieces))}
    tokenizer = Tokenizer(
        models.WordPiece(vocab, unk_token=SPECIAL[1], max_input_chars_per_word=_MAX_WORD)
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    return make_encoder(tokenizer, max_length=max_length)


def learn_wordpiece(counts: Mapping[str, int], *, vocab_size: int, min_frequency: int) -> list[str]:
    """WordPiece pieces by frequency-driven merging (what ``WordPieceTrainer`` does), with
    every tie broken by the merged strings so the result depends on the counts alone.

    Words start as their characters, all but the first carrying the continuation prefix
    ``##``. The alphabet (each kept character in both forms, so any word spelt with known
    characters still tokenizes) comes first, then merges in order: repeatedly the adjacent pair
    with the highest count (ties: lexicographically smallest pair) becomes one piece, until
    ``vocab_size`` pieces or no pair reaches ``min_frequency``. Only the words a merge touches
    are recounted, and a lazy heap finds the best pair, so the cost grows with the number of
    distinct words, not with the corpus.

    Args:
        counts: word -> weight (here: the number of rows containing the word).
        vocab_size: maximum number of pieces returned.
        min_frequency: smallest weight of a character or merged pair that is kept.

    Returns:
        The pieces, alphabet first, in a deterministic order.
    """
    chars: Counter[str] = Counter()
    for word, count in counts.items():
        for char in set(word):
            chars[char] += count
    ranked = sorted(
        (c for c, n in chars.items() if n >= min_frequency), key=lambda c: (-chars[c], c)
    )[: vocab_size // 2]
    alphabet = set(ranked)
    pieces = [*sorted(ranked), *(_CONT + c for c in sorted(ranked))]
    kept = [word for word in sorted(counts) if word and set(word) <= alphabet]
    words = [[word[0], *(_CONT + c for c in word[1:])] for word in kept]
    weights = [counts[word] for word in kept]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, symbols in enumerate(words):
        _count_pairs(symbols, weights[index], index, pairs, where, sign=1)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    known = set(pieces)
    while len(pieces) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -negative:
            continue  # stale entry: the pair's count changed after it was pushed
        if -negative < min_frequency:
            break
        merged = pair[0] + pair[1][len(_CONT) :]
        if merged not in known:
            known.add(merged)
            pieces.append(merged)
        touched: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            touched |= _count_pairs(words[index], weights[index], index, pairs, where, sign=-1)
            words[index] = _merge(words[index], pair, merged)
            touched |= _count_pairs(words[index], weights[index], index, pairs, where, sign=1)
        for changed in sorted(touched - {pair}):
            if pairs.get(changed, 0) > 0:
                heapq.heappush(heap, (-pairs[changed], changed))
    return pieces[:vocab_size]


def _count_pairs(
    word: list[str],
    weight: int,
    index: int,
    pairs: Counter[tuple[str, str]],
    where: dict[tuple[str, str], set[int]],
    *,
    sign: int,
) -> set[tuple[str, str]]:
    """Add (``sign`` 1) or remove (-1) one word's adjacent pairs; return the pairs touched."""
    touched = set(itertools.pairwise(word))
    for pair in itertools.pairwise(word):
        pairs[pair] += sign * weight
    for pair in touched:
        if sign > 0:
            where.setdefault(pair, set()).add(index)
        elif pairs[pair] <= 0:
            del pairs[pair]
    return touched


def _merge(word: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def encoder_from_json(text: str, *, max_length: int) -> TextEncoder:
    """Rebuild an encoder from the JSON of :meth:`TextEncoder.to_json` (or a tokenizer.json)."""
    from tokenizers import Tokenizer

    return make_encoder(Tokenizer.from_str(text), max_length=max_length)


def encoder_from_file(path: Path, *, max_length: int) -> TextEncoder:
    """Load a ``tokenizer.json`` (a pretrained model directory's own tokenizer).

    Raises:
        SpecError: the file is missing or not a tokenizer the ``tokenizers`` library reads.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read tokenizer {path}: {exc}") from exc
    try:
        return encoder_from_json(text, max_length=max_length)
    except SpecError:
        raise
    except Exception as exc:  # tokenizers raises its own Exception type
        raise SpecError(f"{path} is not a readable tokenizer.json ({exc})") from exc


def encoder_from_checkpoint(checkpoint: Checkpoint, *, max_length: int) -> TextEncoder:
    """The tokenizer stored in a checkpoint's metadata.

    Raises:
        CheckpointError: text data but no (or an unreadable) tokenizer in the checkpoint.
    """
    raw = checkpoint.metadata.get(KEY_TOKENIZER)
    if not raw:
        raise CheckpointError(
            f"{checkpoint.path} has text inputs but no tokenizer in its "
            "metadata; train it with `unforget train`"
        )
    try:
        return encoder_from_json(raw, max_length=max_length)
    except SpecError:
        raise
    except Exception as exc:  # tokenizers raises its own Exception type
        raise CheckpointError(f"{checkpoint.path}: stored tokenizer is unreadable ({exc})") from exc


def pretrained_tokenizer(model: ModelSpec) -> Path | None:
    """The ``tokenizer.json`` of a plugin model built from a local model directory, if any.

    The convention is the one of :func:`unforget.models.hf.sequence_classifier`: the plugin's
    ``path`` keyword names a directory holding the pretrained model and its tokenizer.
    """
    path = model.kwargs.get("path") if model.is_plugin else None
    if not isinstance(path, str) or not path:
        return None
    candidate = Path(path).expanduser() / "tokenizer.json"
    return candidate if candidate.is_file() else None


def training_encoder(
    model: ModelSpec, split: Split, column: str, *, rows: np.ndarray, max_length: int
) -> TextEncoder:
    """The tokenizer ``unforget train`` uses: a pretrained model's own, or one fitted on ``rows``.

    For the built-in text model the vocabulary size comes from ``model.kwargs.vocab_size``
    (default 8000); the caller records the fitted size back into the kwargs, since the
    embedding table must match it.
    """
    pretrained = pretrained_tokenizer(model)
    if pretrained is not None:
        return encoder_from_file(pretrained, max_length=max_length)
    vocab = int(model.kwargs.get("vocab_size", 8000))
    return fit_tokenizer(split, column, vocab_size=vocab, max_length=max_length, rows=rows)


def _texts(split: Split, column: str, rows: np.ndarray | None) -> Iterator[list[str]]:
    """Chunks of ``column`` as strings (null cells as ""), cut from the Arrow table."""
    import pyarrow as pa

    table = split.dataset.data.table
    total = table.num_rows if rows is None else len(rows)
    for start in range(0, total, _CHUNK):
        if rows is None:
            values: Iterable[object] = table.column(column).slice(start, _CHUNK).to_pylist()
        else:
            picked = pa.array(np.asarray(rows[start : start + _CHUNK], dtype=np.int64))
            values = table.column(column).take(picked).to_pylist()
        yield ["" if v is None else str(v) for v in values]
