"""Reference ("shadow") models: draws of the retrain oracle, trained with the project's one loop.

Each reference is trained from scratch with the target's ORIGINAL recipe, with its own seed, on
rows that are OUT for both the forget set F and the evidence H:

* ``retain`` (default): the retain set (train minus F minus earlier deletions), RMIA's and
  LiRA's per-request "OUT" models. Valid for exactly one request: the next request's retain set
  differs, and these models contain the next request's rows.
* ``pool``: the held-out *population pool* (the held-out rows methods may read, never audit
  evidence). They are OUT for every training row, so one set serves every request (RMIA's
  offline setting with population data), and they never contain deletable training data, so no
  deletion can make them stale. See the README's audit section for when this is sound.

Trust (issue 11): each reference has a path-independent :class:`Identity` (architecture, recipe,
data fingerprint incl. input bytes, training rows, seed); the cache file is named by its hash.
When a reference is written its SHA-256 goes into a sidecar ``<key>.json``; on reuse the file's
hash and its embedded identity are checked, and any mismatch rebuilds it with a warning. The
audit JSON lists identity and SHA-256 of every reference, and training is deterministic on CPU
for a fixed thread count, so an auditor can retrain one and compare hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from unforget.config.options import as_plain
from unforget.config.spec import RunSpec
from unforget.data.splits import Split, fingerprint, legacy_fingerprint
from unforget.errors import CheckpointError, DataError, UnforgetError
from unforget.io import cache
from unforget.io import checkpoint as ckpt_io
from unforget.io.fileio import atomic_write_json
from unforget.runtime import distributed
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent
from unforget.workflows.workspace import Workspace

Source = Literal["retain", "pool"]
SOURCES: tuple[str, ...] = ("retain", "pool")
META_KEY = "unforget.reference"
SIDECAR_SCHEMA = "unforget.reference/2"
Warn = Callable[[str], None]


def default_cache_dir() -> Path:
    """``<cache root>/references`` (see :mod:`unforget.io.cache`)."""
    from unforget.io.cache import references_dir

    return references_dir()


def reference_seeds(k: int, *, seed: int) -> list[int]:
    """K distinct training seeds, fixed by the audit's ``--seed``."""
    return [1_000_003 * (seed + 1) + i for i in range(k)]


def split_fingerprint(split: Split, columns: Sequence[str]) -> str:
    """SHA-256 over the project's ID/label fingerprint and the bytes of ``columns``.

    :func:`unforget.data.splits.legacy_fingerprint` covers IDs and labels only; a reference
    must also change when an input changes, so the input columns are hashed as Arrow IPC (slices are
    written compactly, so the digest depends on the values only). One sequential read.
    """
    import pyarrow as pa

    digest = hashlib.sha256(legacy_fingerprint(split).encode())
    table = split.dataset.data.table.select(list(columns))

    class _Sink:
        def write(self, data: Any) -> int:
            digest.update(memoryview(data))
            return len(memoryview(data))

        def flush(self) -> None:  # pyarrow's file protocol
            return None

        closed = False

    with pa.ipc.new_stream(pa.PythonFile(_Sink(), mode="w"), table.schema) as writer:
        writer.write_table(table)
    return digest.hexdigest()


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors (sorted names, dtype, shape, raw bytes).

    A safetensors file's bytes are not reproducible (its metadata map is written in a random
    order), so an auditor who retrains a reference compares this hash, not the file's.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Identity:
    """What makes two references interchangeable; no paths, so it is the same on any machine.

    ``rows_sha256`` hashes the IDs of the training rows in row order; ``data_sha256`` is
    :func:`split_fingerprint` of the split they come from. The recipe's own ``seed`` (the
    target's) and ``num_workers`` (no effect on the weights) are left out, so references are
    shared by checkpoints that differ only there.
    """

    source: str
    split: str
    data_sha256: str
    rows_sha256: str
    rows: int
    model: dict[str, Any]
    recipe: dict[str, Any]
    data: dict[str, Any]
    input_shape: tuple[int, ...]
    classes: int
    seed: int

    def as_json(self) -> dict[str, Any]:
        return as_plain(self)  # type: ignore[no-any-return]

    @property
    def key(self) -> str:
        """SHA-256 of the canonical JSON: the cache file's name."""
        payload = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


def training_rows(ws: Workspace, source: str, retain: np.ndarray) -> tuple[Split, np.ndarray]:
    """The split and rows references train on (see module docstring)."""
    if source == "pool":
        return ws.heldout, ws.reference_rows()
    return ws.train, retain


def identities(
    ws: Workspace, *, source: str, rows: np.ndarray, split: Split, seeds: Sequence[int]
) -> list[Identity]:
    """One :class:`Identity` per seed (the data is hashed once)."""
    data = {k: v for k, v in as_plain(ws.spec.data).items() if k != "path"}
    recipe = {k: v for k, v in as_plain(ws.spec.recipe).items() if k not in ("seed", "num_workers")}
    common = {
        "source": source,
        "split": split.name,
        "data_sha256": split_fingerprint(split, [*ws.spec.data.input_columns]),
        "rows_sha256": hashlib.sha256("\n".join(split.ids[r] for r in rows).encode()).hexdigest(),
        "rows": len(rows),
        "model": as_plain(ws.spec.model),
        "recipe": recipe,
        "data": data,
        "input_shape": tuple(ws.info.shape),
        "classes": ws.info.num_classes,
    }
    return [Identity(**common, seed=s) for s in seeds]


@dataclass(frozen=True)
class Record:
    """One reference as the audit used it (listed in the JSON so an auditor can re-check).

    ``sha256`` is the cache file's hash (what was verified); ``weights_sha256`` the tensors'
    hash (:func:`weights_sha256`), reproducible by retraining from ``identity`` on CPU with the
    same thread count. ``status``: ``cached`` (verified), ``trained``, or ``rebuilt`` (the
    cached copy failed verification: ``problem`` says why).
    """

    identity: Identity
    sha256: str
    weights_sha256: str
    status: str
    seconds: float = 0.0
    problem: str | None = None
    threads: int = 0

    def as_json(self) -> dict[str, Any]:
        """What the audit JSON lists: the same whether the reference was trained or cached
        (status goes to the report's notes and timing, so the JSON stays deterministic)."""
        return {
            "key": self.identity.key,
            "sha256": self.sha256,
            "weights_sha256": self.weights_sha256,
            "threads": self.threads,  # CPU threads it was trained with: retrain with as many
            "identity": self.identity.as_json(),
        }


def paths(cache_dir: Path, identity: Identity) -> tuple[Path, Path]:
    """The reference's safetensors file and its sidecar (identity + recorded SHA-256)."""
    return cache_dir / f"{identity.key}.safetensors", cache_dir / f"{identity.key}.json"


def is_cached(cache_dir: Path, identity: Identity) -> bool:
    """Both files present (verification happens on load)."""
    weights, sidecar = paths(cache_dir, identity)
    return weights.is_file() and sidecar.is_file()


def verify(
    cache_dir: Path, identity: Identity
) -> tuple[ckpt_io.Checkpoint | None, str | None, dict[str, Any]]:
    """Load a cached reference if its hash and embedded identity match; else say why not.

    Returns:
        (checkpoint, None, sidecar) when it can be used, (None, problem, {}) when it must be
        rebuilt (problem ``None``: simply not cached).
    """
    weights, sidecar = paths(cache_dir, identity)
    if not weights.is_file():
        return None, None, {}
    try:
        side = json.loads(sidecar.read_text())
        recorded, recorded_weights = side["sha256"], side["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, "no recorded SHA-256 (sidecar missing or unreadable)", {}
    try:
        checkpoint = ckpt_io.load_checkpoint(weights)
    except CheckpointError as exc:
        return None, f"unreadable ({exc})", {}
    if checkpoint.sha256 != recorded:
        problem = f"SHA-256 {checkpoint.sha256[:12]}… differs from the recorded {recorded[:12]}…"
        return None, problem, {}
    if checkpoint.meta_json(META_KEY) != identity.as_json():
        return None, "its embedded identity does not match the cache key", {}
    if weights_sha256(checkpoint.tensors) != recorded_weights:
        return None, "its tensors do not match the recorded weights hash", {}
    return checkpoint, None, side


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything needed to train and write one reference; round-trips through JSON for workers."""

    spec: RunSpec
    split: str
    rows: np.ndarray
    identity: Identity
    cache_dir: Path
    checkpoint: Path  # the audited checkpoint, for a text model's stored tokenizer
    precision: Precision
    allow_plugin: bool
    threads: int = 0  # 0 = leave torch's setting alone
    task: str = "reference"

    def to_json(self, rows_file: Path) -> str:
        return json.dumps(
            {
                "spec": self.spec.to_json(),
                "split": self.split,
                "rows_file": str(rows_file),
                "identity": self.identity.as_json(),
                "cache_dir": str(self.cache_dir),
                "checkpoint": str(self.checkpoint),
                "device": str(self.precision.device),
                "dtype": str(self.precision.dtype).removeprefix("torch.")
                if self.precision.dtype
                else None,
                "allow_plugin": self.allow_plugin,
                "threads": self.threads,
                "task": self.task,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        from unforget.config.spec import merge_spec, spec_layer_from_json

        raw = json.loads(text)
        identity = dict(raw["identity"])
        identity["input_shape"] = tuple(identity["input_shape"])
        return cls(
            spec=merge_spec(spec_layer_from_json(raw["spec"])),
            split=raw["split"],
            rows=np.load(raw["rows_file"], allow_pickle=False),
            identity=Identity(**identity),
            cache_dir=Path(raw["cache_dir"]),
            checkpoint=Path(raw["checkpoint"]),
            precision=Precision(
                device=torch.device(raw["device"]),
                dtype=getattr(torch, raw["dtype"]) if raw["dtype"] else None,
            ),
            allow_plugin=raw["allow_plugin"],
            threads=raw["threads"],
            task=raw["task"],
        )


def train_one(
    job: Job, ws: Workspace | None = None, on_progress: ProgressFn = silent
) -> tuple[Record, nn.Module]:
    """Train one reference, write it and its sidecar atomically, return its record and model.

    With ``ws`` (in-process) the split is taken from it; in a worker it is reopened from the
    spec and its fingerprint checked against the identity, so a worker can never train on
    other data than the parent hashed.
    """
    from unforget.data.splits import input_info, load_split
    from unforget.training.loop import fit

    if job.threads:
        torch.set_num_threads(job.threads)
    if ws is not None:
        split = ws.train if job.split == ws.train.name else ws.heldout
        info, encoder = ws.info, ws.encoder
    else:
        split = load_split(job.spec.data, job.split)
        info = input_info(split, job.spec.data)
        encoder = _encoder(job.checkpoint, info)
        got = split_fingerprint(split, [*job.spec.data.input_columns])
        if got != job.identity.data_sha256:
            raise DataError(f"{job.spec.data.path} changed while references were being trained")
    start = time.perf_counter()
    model, _ = fit(
        job.spec,
        split=split,
        rows=job.rows,
        info=info,
        precision=job.precision,
        seed=job.identity.seed,
        encoder=encoder,
        allow_plugin=job.allow_plugin,
        on_progress=on_progress,
        task=job.task,
    )
    seconds = time.perf_counter() - start
    weights, sidecar = paths(job.cache_dir, job.identity)
    meta = {
        META_KEY: job.identity.as_json(),
        ckpt_io.KEY_SPEC: job.spec.to_json(),
        # which rows it saw, for `unforget cache prune` after a later deletion
        cache.KEY_TRAINED_ON: cache.trained_on(
            fingerprint(split, job.spec.data), len(split), job.rows
        ),
    }
    state = ckpt_io.state_dict_cpu(model)
    sha = ckpt_io.save_checkpoint(weights, state, metadata=meta, force=True)
    threads = torch.get_num_threads()
    weights_hash = weights_sha256(state)
    atomic_write_json(
        sidecar,
        {
            "schema": SIDECAR_SCHEMA,
            "sha256": sha,
            "weights_sha256": weights_hash,
            "identity": job.identity.as_json(),
            "torch": torch.__version__,
            "threads": threads,  # CPU results are bit-identical for a fixed thread count
            "seconds": round(seconds, 3),
        },
    )
    record = Record(job.identity, sha, weights_hash, "trained", seconds=seconds, threads=threads)
    return record, model


def _encoder(checkpoint: Path, info: Any) -> Any:
    """A text model's tokenizer, read from the audited checkpoint (file or model directory)."""
    if info.kind != "text":
        return None
    from unforget.data.text import encoder_from_checkpoint
    from unforget.workflows.workspace import read_checkpoint

    return encoder_from_checkpoint(read_checkpoint(checkpoint), max_length=info.shape[0])


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: the cores this process may use, split evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(jobs, 1))


def train_references(
    ws: Workspace,
    *,
    identities: Sequence[Identity],
    rows: np.ndarray,
    cache_dir: Path,
    precision: Precision,
    jobs: int = 1,
    on_progress: ProgressFn = silent,
    on_warning: Warn = lambda _: None,
) -> tuple[list[nn.Module], list[Record]]:
    """Load (verified) or train each reference; ``jobs`` > 1 trains in local processes.

    Workers are subprocesses of this same Python (``python -m unforget.workflows.ref_worker``),
    each with ``cores // jobs`` torch threads; they run exactly :func:`train_one`, so with the
    same thread count the weights are bit-identical to a sequential run. Every file a worker
    wrote is verified here before use. The hook for distributed ranks is the same: give each
    rank a slice of ``identities`` and let rank 0 verify the files afterwards.

    Raises:
        UnforgetError: a worker failed (its one-line message and exit code).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, tuple[nn.Module, Record]] = {}
    todo: list[tuple[Identity, str | None]] = []
    for identity in identities:
        checkpoint, problem, side = verify(cache_dir, identity)
        if checkpoint is None:
            if problem:
                on_warning(
                    f"warning: cached reference {identity.key[:12]}… failed verification "
                    f"({problem}); rebuilding it"
                )
            todo.append((identity, problem))
            continue
        model = _model(ws, checkpoint, precision)
        weights_hash = side["weights_sha256"]  # verified against the tensors above
        record = Record(
            identity, checkpoint.sha256, weights_hash, "cached", threads=side["threads"]
        )
        loaded[identity.key] = (model, record)
    jobs_list = [
        Job(
            spec=ws.spec,
            split=identity.split,
            rows=np.asarray(rows, dtype=np.int64),
            identity=identity,
            cache_dir=cache_dir,
            checkpoint=ws.checkpoint.path,
            precision=precision,
            allow_plugin=ws.allow_plugin,
            task=f"reference {i + 1}/{len(todo)}",
        )
        for i, (identity, _) in enumerate(todo)
    ]
    if jobs > 1 and len(jobs_list) > 1:
        from unforget.workflows.ref_worker import run_workers

        records = run_workers(jobs_list, jobs=jobs, threads=worker_threads(jobs))
    elif distributed.world().distributed:
        records = train_by_rank(jobs_list, ws, on_progress)
    else:
        records = [train_one(job, ws, on_progress)[0] for job in jobs_list]
    for (identity, problem), record in zip(todo, records, strict=True):
        checkpoint, again, _ = verify(cache_dir, identity)
        if checkpoint is None:
            raise UnforgetError(f"reference {identity.key[:12]}… was written but {again}")
        status = "rebuilt" if problem else "trained"
        record = replace(record, status=status, problem=problem, sha256=checkpoint.sha256)
        loaded[identity.key] = (_model(ws, checkpoint, precision), record)
    pairs = [loaded[i.key] for i in identities]
    return [m for m, _ in pairs], [r for _, r in pairs]


def train_by_rank(jobs: Sequence[Job], ws: Workspace, on_progress: ProgressFn) -> list[Record]:
    """Under torchrun: job i is trained by rank ``i mod W`` ALONE (no DDP, the whole retain
    set), so each file is bit for bit the one a single process writes; after a barrier every
    rank reads the others' files from the cache (which must be a folder all ranks see)."""
    current, mine = distributed.world(), {}
    with distributed.local():
        for i, job in enumerate(jobs):
            if i % current.size == current.rank:
                mine[i] = train_one(job, ws, on_progress)[0]
    distributed.barrier()
    records = []
    for i, job in enumerate(jobs):
        if i in mine:
            records.append(mine[i])
            continue
        checkpoint, problem, side = verify(job.cache_dir, job.identity)
        if checkpoint is None:
            raise UnforgetError(f"reference {job.identity.key[:12]}… from another rank: {problem}")
        records.append(
            Record(
                job.identity,
                checkpoint.sha256,
                side["weights_sha256"],
                "trained",
                threads=side["threads"],
            )
        )
    return records


def _model(ws: Workspace, checkpoint: ckpt_io.Checkpoint, precision: Precision) -> nn.Module:
    from unforget.models import build_model
    from unforget.training.loop import prepare_model

    model = build_model(
        ws.spec.model,
        input_shape=ws.info.shape,
        num_classes=ws.info.num_classes,
        allow_plugin=ws.allow_plugin,
    )
    ckpt_io.load_into(model, checkpoint)
    return prepare_model(model, precision)
