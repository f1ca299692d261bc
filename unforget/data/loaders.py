"""Torch DataLoaders that cut batches straight out of memory-mapped Arrow tables.

A batch is ``(x, y, rows)``: inputs (uint8 images, float features, or int64 token ids padded
with 0), int64 labels, and the int64 row positions in the split (so per-sample signals can be
traced back to IDs). Images stay uint8 until they reach the device, where :func:`to_device`
scales them; that keeps host-to-device copies 4x smaller and lets pinned memory and
``non_blocking`` copies overlap transfer with compute on CUDA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unforget.config.spec import DataSpec
from unforget.data.splits import InputInfo, Split
from unforget.runtime import distributed

if TYPE_CHECKING:
    import pyarrow as pa

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Encoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class RowSource(torch.utils.data.Dataset[Batch]):
    """A subset of a split's rows, read a whole batch at a time (``__getitems__``).

    ``encoder`` turns a list of strings into an int64 array (B, L) for text inputs.
    """

    split: Split
    rows: np.ndarray
    columns: tuple[str, ...]
    info: InputInfo
    encoder: Encoder | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Batch:  # pragma: no cover - DataLoader uses __getitems__
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        import pyarrow as pa

        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        y = torch.from_numpy(self.split.labels[rows])  # the label column, read once by the split
        images = (
            self.split.images(self.columns[0], self.info.shape)
            if self.info.kind == "image"
            else None
        )
        if images is not None:
            return torch.from_numpy(images[rows]), y, torch.from_numpy(rows.copy())
        x = self._inputs(self.split.table.take(pa.array(rows)))
        return x, y, torch.from_numpy(rows.copy())

    def _inputs(self, table: pa.Table) -> torch.Tensor:
        kind = self.info.kind
        if kind == "image":
            return torch.from_numpy(_images(table.column(self.columns[0]), self.info.shape))
        if kind == "text":
            if self.encoder is None:
                raise RuntimeError("text inputs need a tokenizer (the checkpoint has none)")
            texts = ["" if t is None else str(t) for t in table.column(self.columns[0]).to_pylist()]
            return torch.from_numpy(self.encoder(texts))
        if kind == "tokens":
            return torch.from_numpy(_pad(table.column(self.columns[0]), self.info.shape[0]))
        return torch.from_numpy(_features(table, self.columns))


def source(
    split: Split,
    rows: np.ndarray,
    *,
    spec: DataSpec,
    info: InputInfo,
    encoder: Encoder | None = None,
) -> RowSource:
    """A :class:`RowSource` over ``rows`` of ``split`` (row positions, int64)."""
    return RowSource(
        split=split,
        rows=np.asarray(rows, dtype=np.int64),
        columns=tuple(spec.input_columns),
        info=info,
        encoder=encoder,
    )


EVAL_BATCH = 512  # rows per batch of the loaders that only read (evaluation, audit signals)


def rows_loader(
    split: Split,
    rows: np.ndarray,
    *,
    spec: DataSpec,
    info: InputInfo,
    encoder: Encoder | None,
    device: torch.device,
    batch_size: int = EVAL_BATCH,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader[Batch]:
    """``make_loader(source(split, rows, ...))`` in one call: by default a reading loader
    (fixed order, :data:`EVAL_BATCH` rows), the kind evaluation and the audit use."""
    return make_loader(
        source(split, rows, spec=spec, info=info, encoder=encoder),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        device=device,
        num_workers=num_workers,
    )


def make_loader(
    src: RowSource,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader[Batch]:
    """A DataLoader over ``src``; shuffling is driven by ``seed`` alone (reproducible).

    Under torchrun a shuffled loader is this rank's shard of the stream
    (:func:`unforget.runtime.distributed.shard_sampler`) with ``⌈batch_size / world size⌉`` rows per
    batch, so a step across all ranks still covers one global batch of ``batch_size`` rows;
    unshuffled (evaluation) loaders are read whole by every rank.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = distributed.shard_sampler(src, seed=seed) if shuffle else None
    if sampler is not None:
        batch_size = -(-batch_size // distributed.world().size)
    return torch.utils.data.DataLoader(
        src,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        collate_fn=_passthrough,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        drop_last=drop_last and len(src) > batch_size,
    )


def with_rows(loader: torch.utils.data.DataLoader[Batch], rows: np.ndarray) -> Any:
    """``loader`` (a reading loader over a :class:`RowSource`) over other ``rows`` of its split,
    in the given order, with the same batch size and memory pinning."""
    dataset = loader.dataset
    assert isinstance(dataset, RowSource), "with_rows needs a RowSource loader"
    return torch.utils.data.DataLoader(
        dataclasses.replace(dataset, rows=np.asarray(rows, dtype=np.int64)),
        batch_size=loader.batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch (non-blocking from pinned memory) and scale uint8 images to [0, 1] floats."""
    x, y, rows = batch
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return x, y.to(device, non_blocking=True), rows


def _passthrough(batch: Any) -> Any:
    return batch


def _images(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """(B, C, H, W) uint8 from an Array2D/Array3D extension column or an Image column."""
    chunk = column.combine_chunks()
    if hasattr(chunk, "to_numpy") and hasattr(chunk.type, "shape"):
        array = np.asarray(chunk.to_numpy(), dtype=np.uint8)
    else:
        array = _decode_images(chunk.to_pylist())
    # A fresh, writable array: Arrow buffers are read-only and torch must not alias them.
    if array.ndim == 3:
        return np.array(array[:, None], copy=True, order="C")
    return np.array(array.transpose(0, 3, 1, 2), copy=True, order="C")


def fixed_shape_images(
    column: pa.ChunkedArray, shape: tuple[int, ...], limit: int
) -> np.ndarray | None:
    """A whole fixed-shape image column as (N, C, H, W) uint8, or None when the column holds
    encoded images or would take more than ``limit`` bytes (see :meth:`Split.images`)."""
    if not hasattr(column.type, "shape") or len(column) * int(np.prod(shape)) > limit:
        return None
    return _images(column, shape)


def _decode_images(items: list[dict[str, Any]]) -> np.ndarray:
    import io

    from PIL import Image

    out = []
    for item in items:
        with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as im:
            out.append(np.asarray(im, dtype=np.uint8))
    return np.stack(out)


def _pad(column: pa.ChunkedArray, length: int) -> np.ndarray:
    """Pad/truncate variable-length integer sequences to (B, length) with 0."""
    values = column.to_pylist()
    out = np.zeros((len(values), length), dtype=np.int64)
    for i, seq in enumerate(values):
        seq = seq[:length]
        out[i, : len(seq)] = seq
    return out


def _features(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """(B, D) float32 from numeric columns, or from one fixed-length list column."""
    if len(columns) == 1 and _is_list(table.column(columns[0])):
        return np.asarray(table.column(columns[0]).to_pylist(), dtype=np.float32)
    return np.stack(
        [np.asarray(table.column(c).to_numpy(), dtype=np.float32) for c in columns], axis=1
    )


def _is_list(column: pa.ChunkedArray) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type))
