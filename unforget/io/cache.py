"""Everything unforget keeps on disk besides your outputs, under one root, and how to prune it.

Copies of training data are personal data too, so they live in one documented place:

- ``<root>/datasets/``: HuggingFace ``datasets`` converts CSV/JSONL/Parquet/image folders into
  Arrow files here (full rows, IDs included). ``save_to_disk`` folders are read in place.
- ``<root>/references/``: audit reference models, each trained on a retain set. After a later
  deletion such a model was trained on rows that must now be forgotten.

``<root>`` is ``$UNFORGET_CACHE``, else ``$XDG_CACHE_HOME/unforget`` (``~/.cache/unforget``).
:func:`prune` removes what a deletion makes stale (``unforget cache prune``).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KEY_TRAINED_ON = "unforget.trained_on"


def cache_root() -> Path:
    """``$UNFORGET_CACHE`` or ``$XDG_CACHE_HOME/unforget`` (default ``~/.cache/unforget``)."""
    root = os.environ.get("UNFORGET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unforget"
    )
    return Path(root)


def datasets_cache_dir() -> str:
    """Where ``datasets`` writes its Arrow conversions (passed as ``cache_dir``)."""
    return str(cache_root() / "datasets")


def references_dir() -> Path:
    return cache_root() / "references"


def trained_on(fingerprint: str, n_rows: int, rows: np.ndarray) -> dict[str, Any]:
    """A record of which training rows a cached model saw: the data fingerprint and a bitmap
    over row positions (no IDs), so :func:`prune` can tell whether a deleted row was among them.
    """
    mask = np.zeros(n_rows, dtype=bool)
    mask[rows] = True
    return {
        "data_fingerprint": fingerprint,
        "rows": n_rows,
        "bitmap": base64.b64encode(np.packbits(mask).tobytes()).decode(),
    }


def _rows_of(record: dict[str, Any]) -> np.ndarray:
    bits = np.frombuffer(base64.b64decode(record["bitmap"]), dtype=np.uint8)
    return np.flatnonzero(np.unpackbits(bits)[: int(record["rows"])])


@dataclass(frozen=True)
class Deleted:
    """Rows deleted from one data set (from a checkpoint's ledger), as the audit sees them."""

    fingerprints: frozenset[str]  # fingerprints of that training split (recorded and current)
    rows: np.ndarray  # deleted row positions in it


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[Path, ...]
    freed_bytes: int
    kept: int
    dry_run: bool


def stale_references(folder: Path, deleted: Sequence[Deleted], *, everything: bool) -> list[Path]:
    """Reference models to remove: all with ``everything``; else those with no training record
    (made before records existed) and those trained on a deleted row."""
    from unforget.errors import CheckpointError
    from unforget.io.checkpoint import read_metadata

    stale = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        if everything:
            stale.append(path)
            continue
        try:
            raw = read_metadata(path).get(KEY_TRAINED_ON)
        except CheckpointError:
            stale.append(path)  # unreadable: nothing can vouch for it
            continue
        if raw is None:
            stale.append(path)
            continue
        import json

        record = json.loads(raw)
        for d in deleted:
            if (
                record.get("data_fingerprint") in d.fingerprints
                and np.isin(d.rows, _rows_of(record)).any()
            ):
                stale.append(path)
                break
    return stale


def prune(
    deleted: Sequence[Deleted], *, everything: bool = False, dry_run: bool = False
) -> PruneResult:
    """Remove stale references and the ``datasets`` conversion cache (rebuilt on next use).

    The Arrow conversions are removed whole: they are copies of rows, a deletion or a data
    change leaves old copies behind, and which copy holds which row is not recorded.
    """
    refs = stale_references(references_dir(), deleted, everything=everything)
    kept = len(list(references_dir().glob("*.safetensors"))) - len(refs)
    sidecars = [p.with_suffix(".json") for p in refs if p.with_suffix(".json").is_file()]
    targets = [*refs, *sidecars]
    datasets = Path(datasets_cache_dir())
    if datasets.is_dir():
        targets.append(datasets)
    freed = sum(_size(p) for p in targets)
    if not dry_run:
        for path in targets:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return PruneResult(removed=tuple(targets), freed_bytes=freed, kept=kept, dry_run=dry_run)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
