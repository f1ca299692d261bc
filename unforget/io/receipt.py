"""Receipts and provenance: the record a compliance officer checks.

``<out>.receipt.json`` holds the provenance written into the checkpoint (tool, method, resolved
options, seed, versions, device, input hashes, time) plus the output's SHA-256 and accuracy/loss
on the forget set, a retain sample and held-out data before and after. Each receipt names the
SHA-256 of its input checkpoint, so a chain of receipts replays a model's history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unforget.training.evaluate import Score

SCHEMA = "unforget.receipt/1"


@dataclass(frozen=True)
class Snapshot:
    """Accuracy/loss of one model on each evaluation set."""

    forget: Score
    retain: Score
    heldout: Score
    removed_classes: Score | None = None  # held-out rows of classes removed whole
    other_classes: Score | None = None  # held-out rows of the other classes

    def as_dict(self) -> dict[str, Any]:
        out = {
            "forget": self.forget.as_dict(),
            "retain_sample": self.retain.as_dict(),
            "heldout": self.heldout.as_dict(),
        }
        if self.removed_classes is not None and self.other_classes is not None:
            out["heldout_removed_classes"] = self.removed_classes.as_dict()
            out["heldout_other_classes"] = self.other_classes.as_dict()
        return out


@dataclass(frozen=True)
class Provenance:
    """What produced a checkpoint; also stored in its metadata (``unforget.provenance``)."""

    tool: str
    command: str
    method: str
    options: dict[str, Any]
    seed: int
    torch: str
    device: str
    time: str
    input_sha256: str
    manifest_sha256: str
    manifest_count: int
    data_fingerprint: str
    data_changed: bool
    reference_rows: int
    reference_ids_sha256: str
    manifest_duplicates: int = 0  # repeated entries dropped from the manifest
    world_size: int = 1  # processes that ran the method (torchrun)
    backend: str | None = None  # their torch.distributed backend (gloo, nccl), None alone

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Receipt:
    provenance: Provenance
    output_path: str
    output_sha256: str
    input_path: str
    before: Snapshot
    after: Snapshot
    steps: int
    stop_reason: str
    seconds: float
    removed_classes: tuple[str, ...]
    method_details: dict[str, Any]
    reference_ids: tuple[str, ...] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            **self.provenance.as_dict(),
            "input_path": self.input_path,
            "output_path": self.output_path,
            "output_sha256": self.output_sha256,
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "removed_classes": list(self.removed_classes),
            "metrics": {"before": self.before.as_dict(), "after": self.after.as_dict()},
            "method_details": self.method_details,
            "reference_ids": list(self.reference_ids),
        }


def receipt_path(out: Path) -> Path:
    """``model.safetensors`` -> ``model.safetensors.receipt.json``."""
    return out.with_name(out.name + ".receipt.json")


def orphaned_output(out: Path) -> bool:
    """True when ``out`` is an ``apply`` checkpoint whose receipt is missing or describes other
    bytes: what a kill between writing the checkpoint and its receipt leaves. Such a file is
    an unfinished result, so a re-run may replace it without ``--force``.
    """
    from unforget.errors import CheckpointError
    from unforget.io.checkpoint import KEY_PROVENANCE, read_metadata
    from unforget.io.fileio import sha256_file

    if not out.is_file():
        return False
    try:
        provenance = json.loads(read_metadata(out).get(KEY_PROVENANCE, "{}"))
    except (CheckpointError, json.JSONDecodeError):
        return False
    if not isinstance(provenance, dict) or provenance.get("command") != "apply":
        return False
    try:
        recorded = json.loads(receipt_path(out).read_text(encoding="utf-8"))["output_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return bool(recorded != sha256_file(out))
