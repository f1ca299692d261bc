"""``unforget inspect``: what a checkpoint holds, read-only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unforget.io.checkpoint import KEY_LEDGER, KEY_PROVENANCE, KEY_SPEC, Checkpoint
from unforget.io.ledger import LedgerEntry, covered, entries_from_json
from unforget.io.manifest import Manifest


@dataclass(frozen=True)
class CheckpointSummary:
    path: Path
    sha256: str
    tensors: int
    parameters: int
    dtypes: dict[str, int]
    spec: dict[str, Any] | None
    provenance: dict[str, Any] | None
    ledger: tuple[LedgerEntry, ...]
    id_check: dict[str, bool] | None  # ID -> covered by the ledger (with --check-ids)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": "unforget.inspect/1",
            "path": str(self.path),
            "sha256": self.sha256,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "dtypes": self.dtypes,
            "spec": self.spec,
            "provenance": self.provenance,
            "ledger": [
                {
                    "scheme": e.scheme,
                    "legacy": e.legacy,
                    "manifest_sha256": e.manifest_sha256,
                    "count": e.count,
                    "method": e.method,
                    "time": e.time,
                }
                for e in self.ledger
            ],
            "deleted_total": sum(e.count for e in self.ledger),
        }
        if self.id_check is not None:
            out["id_check"] = {
                "covered": sorted(i for i, c in self.id_check.items() if c),
                "not_covered": sorted(i for i, c in self.id_check.items() if not c),
            }
        return out


def summarise(path: Path, *, check: Manifest | None = None) -> CheckpointSummary:
    """Read ``path`` and describe it; with ``check``, say which of its IDs the ledger covers."""
    from unforget.workflows.workspace import read_checkpoint  # a file or a model directory

    ckpt: Checkpoint = read_checkpoint(path)
    ledger = entries_from_json(ckpt.meta_json(KEY_LEDGER))
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in ckpt.tensors.values())
    id_check = None
    if check is not None:
        id_check = dict(zip(check.ids, covered(ledger, list(check.ids)), strict=True))
    return CheckpointSummary(
        path=path,
        sha256=ckpt.sha256,
        tensors=len(ckpt.tensors),
        parameters=ckpt.num_parameters,
        dtypes=dict(sorted(dtypes.items())),
        spec=ckpt.meta_json(KEY_SPEC),
        provenance=ckpt.meta_json(KEY_PROVENANCE),
        ledger=ledger,
        id_check=id_check,
    )
