"""Audit cost as a ratio to one exact retrain, measured in the same run (README, "The audit").

Trains one exact retrain of the sample model without the forget set (the denominator), then
audits with fresh caches:

* ``retain`` references (per request): cold (K to train), warm (same request again), and cold
  with ``--jobs 2``;
* ``pool`` references (trained once on the held-out pool): cold on request A, then warm on a
  *different* request B (what every later request costs).

Targets are the original model (must be FAIL-LEAK) and the exact retrain (must not FAIL), so
the verdicts of both designs are printed side by side. Writes one JSON object to stdout.

    python scripts/audit_cost.py --refs 4 --out /tmp/audit-cost
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from unforget.io.checkpoint import load_checkpoint
from unforget.io.manifest import read_manifest
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows.audit import AuditRequest, run_audit
from unforget.workflows.train import train_checkpoint
from unforget.workflows.workspace import resolve_spec

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


def audit(ckpt: Path, manifest: Path, cache: Path, **kw: Any) -> dict[str, Any]:
    precision = precision_for(resolve_device("cpu"))
    start, cpu = time.perf_counter(), time.process_time()
    report = run_audit(
        AuditRequest(ckpt=ckpt, manifest=manifest, cache_dir=cache, **kw), precision=precision
    )
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),  # this process only (not workers)
        "verdict": report.verdict.status,
        "auc": None if report.target is None else round(report.target.metrics.auc.value, 4),  # type: ignore[union-attr]
        "k": report.k,
        "timing": {k: round(v, 2) for k, v in report.timing.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refs", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    original = SAMPLE / "model.safetensors"
    request_a = SAMPLE / "forget_random10.txt"
    request_b = out / "request_b.txt"  # a second, disjoint request of the same size
    ids_a = set(read_manifest(request_a).ids)
    spec, _ = resolve_spec(load_checkpoint(original), config=None, flags={})
    from unforget.data.splits import load_split

    train_ids = load_split(spec.data, spec.data.train_split).ids
    request_b.write_text("\n".join([i for i in train_ids if i not in ids_a][::9][:600]) + "\n")

    precision = precision_for(resolve_device("cpu"))
    start, cpu = time.perf_counter(), time.process_time()
    retrained = out / "retrained.safetensors"
    report = train_checkpoint(
        spec, out=retrained, precision=precision, exclude=read_manifest(request_a)
    )
    retrain = {
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "loop_seconds": round(report.result.seconds, 2),
    }
    k = args.refs
    rows: dict[str, Any] = {"retrain": retrain}
    rows["retain_cold"] = audit(original, request_a, out / "c-retain", refs=k)
    rows["retain_warm"] = audit(original, request_a, out / "c-retain", refs=k)
    rows["retain_warm_retrained_target"] = audit(retrained, request_a, out / "c-retain", refs=k)
    rows["retain_cold_jobs2"] = audit(original, request_a, out / "c-retain2", refs=k, jobs=2)
    pool = {"ref_source": "pool"}
    rows["pool_cold"] = audit(original, request_a, out / "c-pool", refs=k, **pool)
    rows["pool_warm_same_request"] = audit(original, request_a, out / "c-pool", refs=k, **pool)
    rows["pool_warm_retrained_target"] = audit(retrained, request_a, out / "c-pool", refs=k, **pool)
    rows["pool_warm_other_request"] = audit(original, request_b, out / "c-pool", refs=k, **pool)
    base = retrain["seconds"]
    ratios = {name: round(r["seconds"] / base, 3) for name, r in rows.items() if name != "retrain"}
    print(json.dumps({"k": k, "rows": rows, "ratio_to_retrain": ratios}, indent=1))


if __name__ == "__main__":
    main()
