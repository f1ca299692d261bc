"""Deletion manifests: the IDs to forget, read and validated against the data.

Accepted formats: UTF-8 text with one ID per line (blank lines and ``#`` comments ignored,
whitespace trimmed), CSV with an ``id`` column, JSONL with an ``id`` field per line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unforget.errors import ManifestError
from unforget.io.fileio import sha256_bytes

_SHOW = 5
# Spellings of a missing value that tools write into ID lists (pandas, str(None), SQL dumps);
# such a line names no row, and matching it to a row whose ID was stringified from null would
# forget the wrong sample.
NULL_SPELLINGS = frozenset({"None", "none", "null", "NULL", "Null", "nan", "NaN", "NA", "<NA>"})


@dataclass(frozen=True)
class Manifest:
    """The de-duplicated IDs of a request, in first-seen order, and the file's SHA-256."""

    path: Path
    ids: tuple[str, ...]
    sha256: str
    duplicates: int


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest file.

    Raises:
        ManifestError: missing, unreadable, not UTF-8, no ``id`` column, or empty.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    except OSError as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    suffix = path.suffix.lower()
    if suffix == ".csv":
        items = _csv_ids(text, path)
    elif suffix in {".jsonl", ".ndjson"}:
        items = _jsonl_ids(text, path)
    else:
        items = _text_ids(text)
    nulls = [i for i in items if i in NULL_SPELLINGS]
    if nulls:
        raise ManifestError(
            f"manifest {path}: {len(nulls)} entries are a missing value, not an ID "
            f"(first: {nulls[0]!r}); remove them"
        )
    unique = tuple(dict.fromkeys(items))
    if not unique:
        raise ManifestError(f"manifest {path} lists no IDs")
    return Manifest(
        path=path, ids=unique, sha256=sha256_bytes(raw), duplicates=len(items) - len(unique)
    )


def canonical_ids(ids: tuple[str, ...], *, integer: bool, path: Path) -> tuple[str, ...]:
    """IDs as the dataset's ID type: for integer columns "007" and "7" are the same ID.

    Raises:
        ManifestError: an ID is not an integer while the data's IDs are.
    """
    if not integer:
        return ids
    bad = []
    out = []
    for identifier in ids:
        try:
            out.append(str(int(identifier)))
        except ValueError:
            bad.append(identifier)
    if bad:
        raise ManifestError(
            f"manifest {path}: {len(bad)} IDs are not integers as the data's IDs "
            f"are (first: {_show(bad)})"
        )
    return tuple(dict.fromkeys(out))


def duplicate_count(manifest: Manifest, canonical: tuple[str, ...]) -> int:
    """Entries of ``manifest`` that repeat an earlier one, as written or as the data's ID type
    (``007`` and ``7`` are one integer ID)."""
    return manifest.duplicates + len(manifest.ids) - len(set(canonical))


def resolve_rows(
    ids: tuple[str, ...],
    *,
    train_index: dict[str, int],
    heldout_index: dict[str, int],
    path: Path,
) -> np.ndarray:
    """Row positions of ``ids`` in the training split.

    Raises:
        ManifestError: listing the IDs that are in the held-out split (never trained on, so
            nothing to forget) and those found nowhere, with counts and the first few of each.
    """
    rows, heldout, unknown = [], [], []
    for identifier in ids:
        row = train_index.get(identifier)
        if row is not None:
            rows.append(row)
        elif identifier in heldout_index:
            heldout.append(identifier)
        else:
            unknown.append(identifier)
    problems = []
    if heldout:
        problems.append(
            f"{len(heldout)} IDs are in the held-out split, which the model never "
            f"trained on (first: {_show(heldout)})"
        )
    if unknown:
        problems.append(
            f"{len(unknown)} IDs are not in the training split (first: {_show(unknown)})"
        )
    if problems:
        raise ManifestError(f"manifest {path}: " + "; ".join(problems))
    return np.asarray(rows, dtype=np.int64)


def _show(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOW])
    return shown + (", ..." if len(ids) > _SHOW else "")


def _text_ids(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(line)
    return items


def _csv_ids(text: str, path: Path) -> list[str]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "id" not in [f.strip() for f in reader.fieldnames]:
        raise ManifestError(f"manifest {path}: CSV needs a header with an 'id' column")
    key = next(f for f in reader.fieldnames if f.strip() == "id")
    return [row[key].strip() for row in reader if row.get(key) and row[key].strip()]


def _jsonl_ids(text: str, path: Path) -> list[str]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {path}: line {number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or "id" not in record:
            raise ManifestError(f"manifest {path}: line {number} has no 'id' field")
        value = record["id"]
        if value is None or isinstance(value, (dict, list, bool, float)):
            shown = "null" if value is None else json.dumps(value)
            raise ManifestError(
                f"manifest {path}: line {number} has 'id': {shown}; an ID is a string or integer"
            )
        items.append(str(value).strip())
    return items
