"""The deletion ledger: every deletion applied to a model, without storing the deleted IDs.

IDs may be personal data, and whoever holds a model (a model hub, a customer) must not be able
to list which people were deleted from it. So the ledger stores, per request, the keyed hash
``HMAC-SHA256(key, id)`` (truncated to 96 bits) of each ID plus the manifest's own SHA-256 and
count. The key lives *outside* the model, with the data owner: a key file named by
``--ledger-key`` or ``$UNFORGET_LEDGER_KEY_FILE``, else ``<config root>/ledger.key`` (config
root: ``$UNFORGET_CONFIG``, else ``$XDG_CONFIG_HOME/unforget``, else ``~/.config/unforget``).
The first command that writes a ledger entry creates that default file (32 random bytes, hex,
mode 0600) and says so once. With the key, "is this ID covered?" and "exclude earlier
deletions from the retain set" work as before; without it the hashes cannot be enumerated,
even for small, guessable ID spaces (RFC 2104: a MAC is a PRF under an unknown key).

Ledgers written before this scheme stored a random salt beside salted SHA-256 hashes, which
anyone can brute-force over a small ID space. They stay readable (scheme ``legacy-salted``) and
are marked as such wherever they are shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unforget.errors import CheckpointError, InputError, param

_DIGEST_CHARS = 24  # 96 bits: no accidental collisions at any realistic data-set size
SCHEME_HMAC = "hmac-sha256"
SCHEME_LEGACY = "legacy-salted"
ENV_KEY_FILE = "UNFORGET_LEDGER_KEY_FILE"
ENV_CONFIG = "UNFORGET_CONFIG"
_KEY_FILE: ContextVar[Path | None] = ContextVar("unforget_ledger_key_file", default=None)


class LedgerKeyError(InputError):
    """The ledger key is missing, unreadable, malformed or not the one a ledger was written
    with (exit 2)."""


@dataclass(frozen=True)
class LedgerKey:
    """The data owner's secret; ``key_id`` names it in ledgers without revealing it."""

    secret: bytes
    path: Path

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, b"unforget ledger key id", hashlib.sha256).hexdigest()[:16]

    def hash_id(self, identifier: str) -> str:
        """Truncated HMAC-SHA256 of the ID (IDs are compared as strings)."""
        mac = hmac.new(self.secret, identifier.encode(), hashlib.sha256)
        return mac.hexdigest()[:_DIGEST_CHARS]


def config_root() -> Path:
    """``$UNFORGET_CONFIG``, else ``$XDG_CONFIG_HOME/unforget``, else ``~/.config/unforget``."""
    root = os.environ.get(ENV_CONFIG) or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "unforget"
    )
    return Path(root)


@contextlib.contextmanager
def using_key_file(path: Path | None) -> Iterator[None]:
    """Use ``path`` (the ``--ledger-key`` option) as the key file inside this block."""
    token = _KEY_FILE.set(path)
    try:
        yield
    finally:
        _KEY_FILE.reset(token)


def key_location() -> tuple[Path, str | None]:
    """The key file to use and who named it (``--ledger-key``, the variable, or None)."""
    if (named := _KEY_FILE.get()) is not None:
        return named, param("ledger_key")
    if env := os.environ.get(ENV_KEY_FILE):
        return Path(env), ENV_KEY_FILE
    return config_root() / "ledger.key", None


def load_key() -> LedgerKey:
    """Read the ledger key.

    Raises:
        LedgerKeyError: no key file, or one that does not hold at least 32 hex-encoded bytes.
    """
    path, named_by = key_location()
    if not path.is_file():
        where = f"named by {named_by} " if named_by else ""
        raise LedgerKeyError(
            f"ledger key file {path} {where}does not exist; it is needed to read this model's "
            f"deletion ledger (set {ENV_KEY_FILE} or {param('ledger_key')} to the data owner's key "
            "file)"
        )
    try:
        text = path.read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LedgerKeyError(f"ledger key file {path} is not a hex-encoded key ({exc})") from exc
    if len(secret) < 32:
        raise LedgerKeyError(f"ledger key file {path} holds {len(secret)} bytes; need >= 32")
    return LedgerKey(secret=secret, path=path)


def load_or_create_key() -> tuple[LedgerKey, bool]:
    """The ledger key, creating the default key file (mode 0600) on first use.

    A key file named by ``--ledger-key`` or the variable is never created: a typo there must
    not silently start a second key. Returns the key and whether it was just created.
    """
    path, named_by = key_location()
    if named_by is not None or path.exists():
        return load_key(), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it just now
        return load_key(), False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return load_key(), True


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One applied deletion request."""

    manifest_sha256: str
    count: int
    id_hashes: tuple[str, ...]
    method: str
    time: str
    output_sha256: str | None = None
    scheme: str = SCHEME_LEGACY
    salt: str = ""  # legacy-salted only
    key_id: str = ""  # hmac-sha256 only

    @property
    def legacy(self) -> bool:
        return self.scheme == SCHEME_LEGACY

    def covers(self, ids: Iterable[str], *, key: LedgerKey | None = None) -> list[bool]:
        """For each ID: is it in this entry? (HMAC entries need the key: default, load it.)"""
        hashes = set(self.id_hashes)
        if self.legacy:
            return [hash_id(i, salt=self.salt) in hashes for i in ids]
        key = self.check_key(key or load_key())
        return [key.hash_id(i) in hashes for i in ids]

    def check_key(self, key: LedgerKey) -> LedgerKey:
        if key.key_id != self.key_id:
            raise LedgerKeyError(
                f"the ledger entry of {self.time} was written with another ledger key "
                f"(id {self.key_id}) than {key.path} (id {key.key_id}); use the data owner's key"
            )
        return key


def hash_id(identifier: str, *, salt: str) -> str:
    """Legacy: truncated SHA-256 of ``salt + ":" + id`` (only to read old ledgers)."""
    return hashlib.sha256(f"{salt}:{identifier}".encode()).hexdigest()[:_DIGEST_CHARS]


def new_entry(
    ids: Sequence[str],
    *,
    manifest_sha256: str,
    method: str,
    time: str,
    key: LedgerKey | None = None,
) -> LedgerEntry:
    """Make an HMAC entry for ``ids`` (key: given, else loaded or created)."""
    key = key or load_or_create_key()[0]
    return LedgerEntry(
        manifest_sha256=manifest_sha256,
        count=len(ids),
        id_hashes=tuple(sorted(key.hash_id(i) for i in ids)),
        method=method,
        time=time,
        scheme=SCHEME_HMAC,
        key_id=key.key_id,
    )


def entries_from_json(raw: Any) -> tuple[LedgerEntry, ...]:
    """Decode the ``unforget.ledger`` metadata value (a list of objects)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CheckpointError("metadata 'unforget.ledger' is not a list")
    try:
        entries = tuple(
            LedgerEntry(**{**item, "id_hashes": tuple(item["id_hashes"])}) for item in raw
        )
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"metadata 'unforget.ledger' is malformed ({exc})") from exc
    unknown = {e.scheme for e in entries} - {SCHEME_HMAC, SCHEME_LEGACY}
    if unknown:
        raise CheckpointError(f"metadata 'unforget.ledger' uses unknown schemes {sorted(unknown)}")
    return entries


def entries_to_json(entries: Sequence[LedgerEntry]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        item: dict[str, Any] = {
            "scheme": e.scheme,
            "manifest_sha256": e.manifest_sha256,
            "count": e.count,
            "id_hashes": list(e.id_hashes),
            "method": e.method,
            "time": e.time,
            "output_sha256": e.output_sha256,
        }
        item.update({"salt": e.salt} if e.legacy else {"key_id": e.key_id})
        out.append(item)
    return out


def entries_summary(entries: Sequence[LedgerEntry]) -> list[dict[str, Any]]:
    """What may leave the data owner's hands (e.g. into an exported model): no hashes, no salts."""
    return [
        {
            "scheme": e.scheme,
            "manifest_sha256": e.manifest_sha256,
            "count": e.count,
            "method": e.method,
            "time": e.time,
        }
        for e in entries
    ]


def covered(
    entries: Sequence[LedgerEntry], ids: Sequence[str], *, key: LedgerKey | None = None
) -> list[bool]:
    """For each ID: does any ledger entry cover it? Each ID is hashed once per key or salt."""
    flags = [False] * len(ids)
    if not entries:
        return flags
    if any(not e.legacy for e in entries):
        key = key or load_key()
        hmac_hashes: set[str] = set()
        for e in entries:
            if not e.legacy:
                e.check_key(key)
                hmac_hashes.update(e.id_hashes)
        flags = [key.hash_id(i) in hmac_hashes for i in ids]
    for e in entries:
        if e.legacy:
            flags = [a or b for a, b in zip(flags, e.covers(ids), strict=True)]
    return flags


def find_manifest(entries: Sequence[LedgerEntry], manifest_sha256: str) -> LedgerEntry | None:
    """The entry that applied this exact manifest before, if any."""
    return next((e for e in entries if e.manifest_sha256 == manifest_sha256), None)
