"""The deletion ledger: every deletion applied to a model, without storing the deleted IDs.

IDs may be personal data, so the ledger stores, per request, a random salt and the truncated
SHA-256 of ``salt + id`` for each ID, plus the manifest's own SHA-256. That is enough to answer
"is this ID covered?" and to exclude earlier deletions from the retain set of a later request,
and it does not list the IDs in clear. (With a small, guessable ID space a salted hash can be
brute-forced; the ledger is an integrity record, not an anonymiser.)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unforget.errors import CheckpointError

_DIGEST_CHARS = 24  # 96 bits: no accidental collisions at any realistic data-set size


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One applied deletion request."""

    manifest_sha256: str
    count: int
    salt: str
    id_hashes: tuple[str, ...]
    method: str
    time: str
    output_sha256: str | None = None

    def covers(self, ids: Iterable[str]) -> list[bool]:
        """For each ID: is it in this entry?"""
        hashes = set(self.id_hashes)
        return [hash_id(i, salt=self.salt) in hashes for i in ids]


def hash_id(identifier: str, *, salt: str) -> str:
    """Truncated SHA-256 of ``salt + ":" + id`` (IDs are compared as strings)."""
    return hashlib.sha256(f"{salt}:{identifier}".encode()).hexdigest()[:_DIGEST_CHARS]


def new_entry(
    ids: Sequence[str], *, manifest_sha256: str, method: str, time: str, salt: str | None = None
) -> LedgerEntry:
    """Make an entry for ``ids`` with a fresh random salt (or a given one, for tests)."""
    salt = salt or secrets.token_hex(16)
    hashes = tuple(sorted(hash_id(i, salt=salt) for i in ids))
    return LedgerEntry(
        manifest_sha256=manifest_sha256,
        count=len(ids),
        salt=salt,
        id_hashes=hashes,
        method=method,
        time=time,
    )


def entries_from_json(raw: Any) -> tuple[LedgerEntry, ...]:
    """Decode the ``unforget.ledger`` metadata value (a list of objects)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CheckpointError("metadata 'unforget.ledger' is not a list")
    try:
        return tuple(LedgerEntry(**{**item, "id_hashes": tuple(item["id_hashes"])}) for item in raw)
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"metadata 'unforget.ledger' is malformed ({exc})") from exc


def entries_to_json(entries: Sequence[LedgerEntry]) -> list[dict[str, Any]]:
    return [
        {
            "manifest_sha256": e.manifest_sha256,
            "count": e.count,
            "salt": e.salt,
            "id_hashes": list(e.id_hashes),
            "method": e.method,
            "time": e.time,
            "output_sha256": e.output_sha256,
        }
        for e in entries
    ]


def covered(entries: Sequence[LedgerEntry], ids: Sequence[str]) -> list[bool]:
    """For each ID: does any ledger entry cover it?"""
    flags = [False] * len(ids)
    for entry in entries:
        flags = [a or b for a, b in zip(flags, entry.covers(ids), strict=True)]
    return flags


def find_manifest(entries: Sequence[LedgerEntry], manifest_sha256: str) -> LedgerEntry | None:
    """The entry that applied this exact manifest before, if any."""
    return next((e for e in entries if e.manifest_sha256 == manifest_sha256), None)
