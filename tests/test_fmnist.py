"""The Fashion-MNIST IDX reader and subset helpers (no Debian package needed)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from unforget.data import fmnist
from unforget.errors import DataError


def _idx(path: Path, array: np.ndarray) -> Path:
    """IDX: two zero bytes, dtype 0x08 (uint8), ndim, big-endian int32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())
    return path


def test_read_idx_round_trip_and_writable(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    out = fmnist.read_idx(_idx(tmp_path / "x.gz", images))
    assert out.shape == (2, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out, images) and out.flags.writeable


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b"\x00\x00\x0d\x01" + struct.pack(">i", 3) + b"abc")
    with pytest.raises(DataError, match="not a uint8 IDX"):
        fmnist.read_idx(bad)
    short = _idx(tmp_path / "short.gz", np.zeros(4, np.uint8))
    raw = gzip.decompress(short.read_bytes())[:-1]
    short.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="does not match"):
        fmnist.read_idx(short)


def test_missing_package_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        fmnist.load("train", root=tmp_path)


def test_stratified_subset_is_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = fmnist.stratified_subset(labels, 7, seed=1)
    assert np.array_equal(np.bincount(labels[a]), np.full(10, 7))
    assert np.array_equal(a, fmnist.stratified_subset(labels, 7, seed=1))
    assert not np.array_equal(a, fmnist.stratified_subset(labels, 7, seed=2))
