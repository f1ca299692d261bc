"""Atomic file writes, output locks and content hashes: nothing unforget writes is half-written.

Every output (checkpoints, receipts, reports) goes through :func:`atomic_writer` or
:class:`Staged`: the bytes land in a temporary file ``.<name>.XXXXXXXX.tmp`` in the destination
folder, are fsynced, and are renamed over the target in one step, so a crash or a full disk
leaves either the old state or the new one, never a torn file.

Writers of one target serialise on an advisory ``fcntl`` lock file ``.<name>.lock`` beside it
(:func:`output_lock`). Because every writer holds that lock while its temporary file exists,
a writer that holds it knows any temporary file of the same target is a leftover of a killed
run (``kill -9`` runs no cleanup) and removes it: temporary files never pile up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from unforget.errors import OutputBusyError, OutputExistsError, param

_CHUNK = 1 << 20
_HELD = threading.local()  # per thread: resolved target -> [fd, depth]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def refuse_existing(path: Path, *, force: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and ``force`` is off."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass {param('force', True)} to replace it")


def lock_path(path: Path) -> Path:
    """``out/model.safetensors`` -> ``out/.model.safetensors.lock``."""
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive writer lock of ``path`` (re-entrant within one thread).

    The lock file is removed on release while still locked; a waiter that opened the old file
    notices (its inode no longer matches the path) and retries, the usual safe pattern.

    Raises:
        OutputBusyError: another process (or thread) holds the lock.
    """
    target = Path(path).resolve()
    held: dict[str, list[int]] = _HELD.__dict__.setdefault("locks", {})
    key = str(target)
    if key in held:
        held[key][1] += 1
        try:
            yield
        finally:
            held[key][1] -= 1
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock_path(target), target)
    held[key] = [fd, 1]
    try:
        yield
    finally:
        del held[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path(target))
        os.close(fd)


def _acquire(lock: Path, target: Path) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(
                    f"another unforget run is writing {target} (lock {lock}); "
                    "wait for it to finish, or choose another output"
                ) from None
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file between our open and flock


def _temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp$")


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temporary files of ``target`` left by killed runs. Call with its lock held."""
    pattern = _temp_pattern(target)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target.parent):
            if pattern.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


class Staged:
    """Bytes written and fsynced under a temporary name beside ``target``, not yet visible.

    Holds ``target``'s lock from creation until :meth:`commit` (rename into place) or
    :meth:`discard`, so several outputs can be prepared first and then made visible in a
    chosen order (e.g. a checkpoint before its receipt).
    """

    def __init__(self, target: str | os.PathLike[str], data: bytes) -> None:
        self.target = Path(target)
        self.sha256 = sha256_bytes(data)
        self._lock = output_lock(self.target)
        self._lock.__enter__()
        try:
            remove_stale_temps(self.target)
            fd, name = tempfile.mkstemp(
                prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent
            )
            self._tmp: Path | None = Path(name)
            os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal modes
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        """Rename the temporary file over the target and persist the rename."""
        if self._tmp is None:
            raise RuntimeError(f"{self.target}: already committed or discarded")
        os.replace(self._tmp, self.target)
        self._tmp = None
        _fsync_dir(self.target.parent)
        self._release()

    def discard(self) -> None:
        """Remove the temporary file (if any) and release the lock; safe to call twice."""
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None
        self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None  # type: ignore[assignment]
        if lock is not None:
            lock.__exit__(None, None, None)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    with output_lock(target):
        remove_stale_temps(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            os.chmod(tmp_name, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return the SHA-256 of exactly these bytes."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return sha256_bytes(data)


def json_bytes(obj: Any) -> bytes:
    """Stable, indented JSON (sorted keys, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as stable, indented JSON (sorted keys, trailing newline)."""
    atomic_write(path, json_bytes(obj))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
