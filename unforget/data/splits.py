"""Data sets on disk: splits, stable IDs, fingerprints, and the forget/retain/held-out split.

Everything is read with HuggingFace ``datasets`` into memory-mapped Arrow tables; rows are
addressed by integer position and batches are cut straight from Arrow (see
:mod:`unforget.data.loaders`), so nothing here copies a split into Python lists except the IDs.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from unforget.config.spec import DataSpec
from unforget.errors import DataError, collect

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

InputKind = Literal["image", "tabular", "tokens", "text"]
COMBINE_LIMIT = 2 << 30  # bytes: larger tables stay chunked (combining copies into memory)
_EXTENSIONS = {"parquet": (".parquet",), "csv": (".csv",), "jsonl": (".jsonl", ".json")}


@dataclass(frozen=True)
class Split:
    """One split: the memory-mapped table, its IDs as strings, and its labels."""

    name: str
    dataset: datasets.Dataset
    ids: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    id_is_int: bool

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        """ID -> row position."""
        return {identifier: row for row, identifier in enumerate(self.ids)}

    @functools.cached_property
    def table(self) -> pa.Table:
        """The split's Arrow table in one chunk, which batches are cut from.

        Why: ``datasets`` writes ~1,000-row chunks, and a ``take`` across them is slow: a
        random 128-row batch of Fashion-MNIST took 12.7 ms from the chunked table and 1.0 ms
        from one chunk (measured), so loading was most of a training step. Combining copies
        the table into memory once, so tables over :data:`COMBINE_LIMIT` stay as they are.
        """
        table = self.dataset.data.table
        return table.combine_chunks() if table.nbytes <= COMBINE_LIMIT else table

    def images(self, column: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The whole image column as one (N, C, H, W) uint8 array, decoded once and kept.

        Only for fixed-shape array columns (``Array2D``/``Array3D``: Fashion-MNIST, CIFAR) of
        at most :data:`COMBINE_LIMIT` bytes; None otherwise (encoded images, large splits),
        and batches are then cut from :attr:`table`. Indexing it costs ~0.1 ms a 128-row batch
        against ~1 ms for an Arrow ``take`` plus conversion (measured on Fashion-MNIST).
        """
        if column not in self._images:
            from unforget.data.loaders import fixed_shape_images

            self._images[column] = fixed_shape_images(
                self.table.column(column), shape, COMBINE_LIMIT
            )
        return self._images[column]

    @functools.cached_property
    def _images(self) -> dict[str, np.ndarray | None]:
        return {}  # column -> its decoded array (see :meth:`images`)


@dataclass(frozen=True)
class InputInfo:
    """What the model sees: kind of input, per-sample shape, classes."""

    kind: InputKind
    shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]


def detect_format(path: Path) -> str:
    """Guess the on-disk format of a data folder (``save_to_disk`` DatasetDict, files, images)."""
    if (path / "dataset_dict.json").is_file():
        return "arrow"
    for fmt, exts in _EXTENSIONS.items():
        if any(any(path.glob(f"*{ext}")) for ext in exts) or any(path.glob(f"*/*{exts[0]}")):
            return fmt
    if any(p.is_dir() for p in path.iterdir()):
        return "imagefolder"
    raise DataError(f"cannot tell the data format of {path}; set data.format")


def load_split(spec: DataSpec, split: str) -> Split:
    """Load one split and check its ID and label columns.

    Raises:
        DataError: missing folder/split/columns, or duplicate IDs.
    """
    dataset = _load_dataset(spec, split)
    columns = set(dataset.column_names)
    needed = [spec.id_column, spec.label_column, *spec.input_columns]
    missing = [c for c in needed if c not in columns]
    collect(
        [
            f"split {split!r} has no column {c!r} (columns: {', '.join(sorted(columns))})"
            for c in missing
        ],
        error=DataError,
        what=f"data {spec.path}",
    )
    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data.table
    id_column = table.column(spec.id_column)
    if id_column.null_count:
        first = next(i for i, v in enumerate(id_column.is_null().to_pylist()) if v)
        raise DataError(
            f"split {split!r}: ID column {spec.id_column!r} has {id_column.null_count} empty "
            f"(null) IDs (first at row {first}); every row needs an ID to be deletable"
        )
    id_is_int = _is_integer(id_column.type)
    ids = tuple(str(v) for v in id_column.to_pylist())
    if len(set(ids)) != len(ids):
        dupes = _first_duplicates(ids)
        raise DataError(
            f"split {split!r}: ID column {spec.id_column!r} has duplicates "
            f"(first: {', '.join(dupes)})"
        )
    labels = np.asarray(table.column(spec.label_column).to_numpy(), dtype=np.int64)
    return Split(name=split, dataset=dataset, ids=ids, labels=labels, id_is_int=id_is_int)


def input_info(split: Split, spec: DataSpec) -> InputInfo:
    """Infer the input kind and shape from the features of the first input column."""
    from datasets import Array2D, Array3D, ClassLabel, Image, Sequence, Value

    features = split.dataset.features
    first = features[spec.input_columns[0]]
    label = features[spec.label_column]
    if isinstance(label, ClassLabel):
        names = tuple(label.names)
    else:
        names = tuple(str(i) for i in range(int(split.labels.max()) + 1))
    if isinstance(first, (Array2D, Array3D)):
        shape = tuple(first.shape)
        kind: InputKind = "image"
        shape = (1, *shape) if len(shape) == 2 else (shape[2], shape[0], shape[1])
    elif isinstance(first, Image):
        sample = np.asarray(split.dataset[0][spec.input_columns[0]])
        kind = "image"
        shape = (1, *sample.shape) if sample.ndim == 2 else (sample.shape[2], *sample.shape[:2])
    elif isinstance(first, Value) and first.dtype == "string":
        kind, shape = "text", (spec.max_length,)
    elif isinstance(first, (Sequence, list)) and _is_integer_feature(first):
        kind, shape = "tokens", (spec.max_length,)
    elif isinstance(first, (Sequence, list)):
        kind, shape = "tabular", (len(split.dataset[0][spec.input_columns[0]]),)
    else:
        kind, shape = "tabular", (len(spec.input_columns),)
    return InputInfo(kind=kind, shape=shape, num_classes=len(names), class_names=names)


FINGERPRINT_PREFIX = "v2:"
_FINGERPRINT_CHUNK = 8192  # rows per Arrow ``take``: bounded memory, still vectorised


def fingerprint(split: Split, spec: DataSpec) -> str:
    """``v2:`` + SHA-256 over IDs, labels *and* inputs, independent of row order.

    Rows are visited in ID order (IDs are unique), and each column is hashed as the Arrow
    buffers of the rows taken in that order, chunk by chunk, so the cost is one streaming pass
    over the split with no Python objects per row. A shuffled copy of the data gives the same
    fingerprint; a changed label, ID or image does not. Images stored as file paths (the
    ``imagefolder`` layout) are hashed by file content, not by path.

    When the rows are already in ID order (sequential IDs, the usual layout) each chunk of a
    column without nulls is a contiguous slice, copied compactly by concatenation instead of
    gathered by ``take``: the same bytes, hence the same digest. For nested-list images the
    gather was most of the cost (full Fashion-MNIST's training split: 0.33–0.48 s → 0.06 s,
    paid by every command that opens a checkpoint; the rest is SHA-256 itself).

    If the data on disk no longer matches what a model was trained on, IDs could resolve to the
    wrong rows; comparing this against the spec's ``train_fingerprint`` catches that.
    """
    import pyarrow as pa

    table = split.dataset.data.table
    order = np.asarray(sorted(range(len(split.ids)), key=split.ids.__getitem__), dtype=np.int64)
    in_order = bool((order == np.arange(len(order))).all())
    digest = hashlib.sha256(FINGERPRINT_PREFIX.encode())
    for name in dict.fromkeys([spec.id_column, spec.label_column, *spec.input_columns]):
        column = table.column(name)
        digest.update(f"\0{name}\0{column.type}\0".encode())
        sliced = in_order and not column.null_count  # a compact copy: what ``take`` gives
        for start in range(0, len(order), _FINGERPRINT_CHUNK):
            if sliced:
                part = pa.concat_arrays(column.slice(start, _FINGERPRINT_CHUNK).chunks)
            else:
                rows = pa.array(order[start : start + _FINGERPRINT_CHUNK])
                part = column.take(rows).combine_chunks()
            _hash_array(digest, part)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def legacy_fingerprint(split: Split) -> str:
    """The fingerprint of unforget before ``v2``: SHA-256 of IDs and labels in row order.

    Still computed to read checkpoints that recorded it (64 hex digits, no prefix).
    """
    digest = hashlib.sha256()
    digest.update("\n".join(split.ids).encode())
    digest.update(b"\0")
    digest.update(split.labels.astype("<i8").tobytes())
    return digest.hexdigest()


def fingerprint_matches(recorded: str, split: Split, spec: DataSpec) -> tuple[bool, str]:
    """Does the data match a recorded fingerprint? Also returns the current ``v2`` one.

    A legacy (unprefixed) fingerprint is compared with :func:`legacy_fingerprint`, which also
    changes when only the row order changed.
    """
    current = fingerprint(split, spec)
    if recorded.startswith(FINGERPRINT_PREFIX):
        return recorded == current, current
    return recorded == legacy_fingerprint(split), current


def reference_mask(ids: tuple[str, ...], *, fraction: float) -> np.ndarray:
    """Which held-out rows unlearning methods may read: a stable hash of each ID below ``fraction``.

    Chosen by hash so the split survives re-ordering and does not depend on any seed; the
    audit uses only the complement as evidence.
    """
    scale = float(1 << 64)
    values = np.fromiter(
        (int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") / scale for i in ids),
        dtype=np.float64,
        count=len(ids),
    )
    return values < fraction


def _hash_array(digest: Any, array: Any) -> None:
    """Feed one freshly taken (hence compact, zero-offset) Arrow array into ``digest``."""
    import pyarrow as pa

    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if _is_image_struct(array.type):
        for item in array.to_pylist():
            _hash_image(digest, item)
        return
    digest.update(int(array.null_count).to_bytes(8, "little"))
    if array.null_count:
        digest.update(np.asarray(array.is_null()).tobytes())
    for buffer in array.buffers():
        if buffer is not None:
            digest.update(memoryview(buffer))


def _is_image_struct(arrow_type: Any) -> bool:
    import pyarrow as pa

    if not pa.types.is_struct(arrow_type):
        return False
    names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
    return names == {"bytes", "path"}


def _hash_image(digest: Any, item: dict[str, Any] | None) -> None:
    """An ``Image`` cell: its bytes, or the content of the file it points at."""
    if item is None:
        digest.update(b"\0none")
        return
    data = item.get("bytes")
    if data is None and item.get("path"):
        data = Path(str(item["path"])).read_bytes()
    payload = bytes(data or b"")
    digest.update(len(payload).to_bytes(8, "little"))
    digest.update(payload)


def _load_dataset(spec: DataSpec, split: str) -> datasets.Dataset:
    import datasets as hf

    from unforget.io.cache import datasets_cache_dir

    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"data folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data.path {path} is a file; name the folder that holds the splits")
    fmt = spec.format if spec.format != "auto" else detect_format(path)
    try:
        if fmt == "arrow":
            loaded = hf.load_from_disk(str(path))
            if isinstance(loaded, hf.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path} has no split {split!r} (has: {', '.join(loaded)})")
                return loaded[split]
            raise DataError(f"{path} is a single Dataset; save a DatasetDict with named splits")
        if fmt == "imagefolder":
            return hf.load_dataset(
                "imagefolder", data_dir=str(path), split=split, cache_dir=datasets_cache_dir()
            )
        files = _split_files(path, split, fmt)
        builder = "json" if fmt == "jsonl" else fmt
        return hf.load_dataset(
            builder, data_files={split: files}, split=split, cache_dir=datasets_cache_dir()
        )
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"cannot read split {split!r} from {path}: {exc}") from exc


def _split_files(path: Path, split: str, fmt: str) -> list[str]:
    """Files of one split: ``<split>.<ext>``, ``<split>-*.<ext>`` or ``<split>/*.<ext>``."""
    files: list[Path] = []
    for ext in _EXTENSIONS[fmt]:
        files += [path / f"{split}{ext}"] if (path / f"{split}{ext}").is_file() else []
        files += sorted(path.glob(f"{split}-*{ext}")) + sorted(path.glob(f"{split}/*{ext}"))
    if not files:
        raise DataError(
            f"{path} has no {fmt} files for split {split!r} (expected {split}{_EXTENSIONS[fmt][0]})"
        )
    return [str(f) for f in files]


def _is_integer(arrow_type: object) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(arrow_type))


def _is_integer_feature(feature: object) -> bool:
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    return getattr(inner, "dtype", "").startswith(("int", "uint"))


def _first_duplicates(ids: tuple[str, ...], limit: int = 3) -> list[str]:
    seen: set[str] = set()
    dupes: list[str] = []
    for identifier in ids:
        if identifier in seen and identifier not in dupes:
            dupes.append(identifier)
            if len(dupes) == limit:
                break
        seen.add(identifier)
    return dupes
