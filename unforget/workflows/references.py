"""Reference ("shadow") models: draws of the retrain oracle, trained with the project's one loop.

Each reference is trained from scratch with the target's ORIGINAL recipe on the retain set
(train minus the forget set minus earlier deletions) with its own seed, so under it the forget
set F and the held-out set H are exchangeable. They are cached on disk keyed by (architecture,
recipe, retain-set hash, seed): a second audit of the same request trains nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from unforget.config.options import as_plain
from unforget.io import cache
from unforget.io import checkpoint as ckpt_io
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent
from unforget.training.loop import fit
from unforget.workflows.workspace import Workspace

CHOICES = (8, 4, 2)


def default_cache_dir() -> Path:
    """``<cache root>/references`` (see :mod:`unforget.io.cache`)."""
    from unforget.io.cache import references_dir

    return references_dir()


def retain_hash(ws: Workspace, retain: np.ndarray) -> str:
    """SHA-256 over the retain set's IDs (in row order)."""
    return hashlib.sha256("\n".join(ws.train.ids[r] for r in retain).encode()).hexdigest()


def cache_key(ws: Workspace, retain_sha: str, seed: int) -> str:
    """Key of one reference: architecture, recipe, retain set and seed."""
    payload = json.dumps(
        {
            "model": as_plain(ws.spec.model),
            "recipe": as_plain(ws.spec.recipe),
            "input_shape": list(ws.info.shape),
            "classes": ws.info.num_classes,
            "retain": retain_sha,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def reference_seeds(k: int, *, seed: int) -> list[int]:
    """K distinct training seeds, fixed by the audit's ``--seed``."""
    return [1_000_003 * (seed + 1) + i for i in range(k)]


@dataclass(frozen=True)
class Plan:
    """How many references to use and what they cost (estimated before any training)."""

    k: int
    cached: int
    seconds_per_reference: float
    reason: str


def time_one_epoch(ws: Workspace, retain: np.ndarray, precision: Precision) -> float:
    """Wall time of one training epoch with the target's recipe on the retain set."""
    spec = ws.spec.replace(recipe=replace(ws.spec.recipe, epochs=1))
    start = time.perf_counter()
    fit(
        spec,
        split=ws.train,
        rows=retain,
        info=ws.info,
        precision=precision,
        seed=0,
        encoder=ws.encoder,
        allow_plugin=ws.allow_plugin,
    )
    return time.perf_counter() - start


def plan(
    requested: int | None,
    *,
    ws: Workspace,
    retain: np.ndarray,
    seed: int,
    budget_minutes: float,
    cache_dir: Path,
    precision: Precision,
) -> Plan:
    """``requested`` K, or (``None`` = auto) the largest K in {8, 4, 2} within the budget.

    Cached references cost nothing; the rest cost one timed epoch times the recipe's epochs.
    """
    sha = retain_hash(ws, retain)

    def cached(k: int) -> int:
        return sum(
            (cache_dir / f"{cache_key(ws, sha, s)}.safetensors").is_file()
            for s in reference_seeds(k, seed=seed)
        )

    if requested is not None:
        per = (
            0.0
            if cached(requested) == requested
            else (time_one_epoch(ws, retain, precision) * ws.spec.recipe.epochs)
        )
        return Plan(requested, cached(requested), per, "requested")
    if cached(CHOICES[0]) == CHOICES[0]:
        return Plan(CHOICES[0], CHOICES[0], 0.0, "cached")
    per = time_one_epoch(ws, retain, precision) * ws.spec.recipe.epochs
    for k in CHOICES:
        if (k - cached(k)) * per <= budget_minutes * 60:
            return Plan(k, cached(k), per, f"fits the {budget_minutes:g}-minute budget")
    return Plan(
        0, 0, per, f"even {CHOICES[-1]} references exceed the {budget_minutes:g}-minute budget"
    )


def ensure(
    k: int,
    *,
    ws: Workspace,
    retain: np.ndarray,
    seed: int,
    cache_dir: Path,
    precision: Precision,
    on_progress: ProgressFn = silent,
    on_trained: Callable[[int, float], None] | None = None,
) -> list[nn.Module]:
    """Load or train the K references (trained ones are written to the cache atomically)."""
    sha = retain_hash(ws, retain)
    models = []
    for i, ref_seed in enumerate(reference_seeds(k, seed=seed)):
        path = cache_dir / f"{cache_key(ws, sha, ref_seed)}.safetensors"
        if path.is_file():
            models.append(ws.load_model(path, precision))
            continue
        start = time.perf_counter()
        model, _ = fit(
            ws.spec,
            split=ws.train,
            rows=retain,
            info=ws.info,
            precision=precision,
            seed=ref_seed,
            encoder=ws.encoder,
            allow_plugin=ws.allow_plugin,
            on_progress=on_progress,
            task=f"reference {i + 1}/{k}",
        )
        meta = {
            "unforget.reference": {
                "retain_sha256": sha,
                "seed": ref_seed,
                "spec": json.loads(ws.spec.to_json()),
            },
            cache.KEY_TRAINED_ON: cache.trained_on(ws.fingerprint, len(ws.train), retain),
        }
        ckpt_io.save_checkpoint(path, ckpt_io.state_dict_cpu(model), metadata=meta, force=True)
        if on_trained:
            on_trained(i, time.perf_counter() - start)
        models.append(model)
    return models
