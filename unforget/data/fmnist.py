"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (MIT licence, Zalando).

Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms" (2017). The package installs four IDX gzip files; nothing is downloaded at run time.
IDX: two zero bytes, a dtype byte (0x08 = uint8), the number of dimensions, one big-endian
int32 per dimension, then the raw array.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from unforget.errors import DataError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install it with: sudo apt-get install -y dataset-fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one (gzipped) IDX file into a writable uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: size does not match its header {shape}")
    return data.reshape(shape).copy()


def load(part: str, root: Path = DEBIAN_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of ``part`` ("train" or "test").

    Raises:
        DataError: the Debian package is not installed (with the install command).
    """
    images_name, labels_name = _FILES[part]
    if not (root / images_name).is_file():
        raise DataError(f"Fashion-MNIST not found in {root}; {INSTALL_HINT}")
    return read_idx(root / images_name), read_idx(root / labels_name).astype(np.int64)


def stratified_subset(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
    """Sorted row indices with ``per_class`` rows of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picks))


def write_split(path: Path, *, ids: list[str], images: np.ndarray, labels: np.ndarray) -> None:
    """Write a split as parquet with explicit features (string ID, uint8 image, ClassLabel)."""
    from datasets import Array2D, ClassLabel, Dataset, Features, Value

    features = Features(
        {
            "id": Value("string"),
            "image": Array2D(shape=tuple(images.shape[1:]), dtype="uint8"),
            "label": ClassLabel(names=list(CLASS_NAMES)),
        }
    )
    dataset = Dataset.from_dict({"id": ids, "image": images, "label": labels}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    # The table's schema metadata carries the features, so ClassLabel names survive a reload.
    table = dataset.data.table.replace_schema_metadata(features.arrow_schema.metadata)
    pq.write_table(table, str(path), compression="zstd")


def export(
    out: Path,
    *,
    train_rows: np.ndarray | None = None,
    test_rows: np.ndarray | None = None,
    root: Path = DEBIAN_ROOT,
) -> dict[str, int]:
    """Write ``train.parquet`` (from the train part) and ``heldout.parquet`` (from the test part).

    IDs are ``fmnist-train-NNNNN`` / ``fmnist-test-NNNNN`` with the row number in the original
    file, so subsets and the full set share IDs.
    """
    counts = {}
    for part, split, rows in (("train", "train", train_rows), ("test", "heldout", test_rows)):
        images, labels = load(part, root)
        rows = np.arange(len(labels)) if rows is None else rows
        ids = [f"fmnist-{part}-{r:05d}" for r in rows]
        write_split(out / f"{split}.parquet", ids=ids, images=images[rows], labels=labels[rows])
        counts[split] = len(rows)
    return counts
