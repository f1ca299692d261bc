"""Evidence for the default unlearning method: methods vs exact retraining, audited by the project.

For each forget setting and seed: an exact retrain (``unforget train --like --exclude``), then each
method through ``unforget apply``'s code path, every model audited by ``unforget audit`` with the
same K cached references (trained once per setting, audit seed 0) and the original as positive
control. Reported per (setting, row): mean ± std over seeds of forget / retain / test accuracy,
AUC_U − AUC_ref with its interval, TPR@1% excess over the references, verdicts, and the time
ratio method / retrain measured in this process (wall time of the whole call).

    python scripts/evaluate_default.py --settings random10,random20 --seeds 3 --out eval/

Settings: ``random10`` and ``shipped20`` (the shipped manifests), ``randomNN`` (NN % of the
sample's training rows, drawn with numpy seed 7), ``class:Sandal`` (the shipped class
manifest). Writes ``rows.json`` (one object per model) and ``table.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from unforget.io.checkpoint import load_checkpoint
from unforget.io.manifest import read_manifest
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows.audit import AuditRequest, run_audit
from unforget.workflows.train import train_checkpoint
from unforget.workflows.unlearn import ApplyRequest, apply
from unforget.workflows.workspace import open_workspace, resolve_spec

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
CPU = precision_for(resolve_device("cpu"))


def manifest_for(setting: str, out: Path) -> Path:
    """The manifest file of a setting (shipped, or drawn once with numpy seed 7)."""
    if setting == "random10":
        return SAMPLE / "forget_random10.txt"
    if setting == "shipped20":  # the quick start's manifest (scripts/build_forget_manifest.py)
        return SAMPLE / "forget_random20.txt"
    if setting == "class:Sandal":
        return SAMPLE / "forget_class_sandal.txt"
    if not setting.startswith("random"):
        raise SystemExit(f"unknown setting {setting!r}")
    fraction = int(setting.removeprefix("random")) / 100
    path = out / f"forget_{setting}.txt"
    if not path.is_file():
        ids = np.asarray(open_workspace(SAMPLE / "model.safetensors").train.ids, dtype=object)
        chosen = np.random.default_rng(7).choice(ids, size=int(fraction * len(ids)), replace=False)
        path.write_text("\n".join(chosen) + "\n")
    return path


def retrain(manifest: Path, out: Path, seed: int) -> float:
    """``unforget train --like model --exclude manifest --seed seed``; returns wall seconds."""
    base = load_checkpoint(SAMPLE / "model.safetensors")
    spec, _ = resolve_spec(base, config=None, flags={"recipe.seed": seed})
    spec = spec.replace(train_fingerprint=None)
    start = time.perf_counter()
    train_checkpoint(spec, out=out, precision=CPU, force=True, exclude=read_manifest(manifest))
    return time.perf_counter() - start


def unlearn(method: str, manifest: Path, out: Path, seed: int) -> tuple[float, str]:
    """``unforget apply --method NAME [--set k=v ...] --seed seed`` for ``NAME[k=v;k=v]``;
    returns wall seconds and stop reason."""
    name, _, rest = method.partition("[")
    options = dict(kv.split("=", 1) for kv in rest.rstrip("]").split(";") if kv)
    start = time.perf_counter()
    result = apply(
        ApplyRequest(
            ckpt=SAMPLE / "model.safetensors",
            manifest=manifest,
            method=name,
            options=options,
            out=out,
            seed=seed,
            force=True,
        ),
        precision=CPU,
    )
    seconds = time.perf_counter() - start
    return seconds, result.receipt.stop_reason if result.receipt else "already applied"


def audit(ckpt: Path, manifest: Path, refs: int) -> dict[str, Any]:
    """The project's audit of ``ckpt`` (K cached references, the original as positive control)."""
    report = run_audit(
        AuditRequest(
            ckpt=ckpt, manifest=manifest, original=SAMPLE / "model.safetensors", refs=refs
        ),
        precision=CPU,
    )
    t, comparison = report.target, report.comparison
    assert t is not None and t.metrics is not None and comparison is not None
    diff = comparison.auc_difference
    return {
        "forget_acc": t.utility.forget,
        "retain_acc": t.utility.retain,
        "test_acc": t.utility.heldout,
        "auc": t.metrics.auc.value,
        "auc_diff": diff.value,
        "auc_diff_low": diff.low,
        "auc_diff_high": diff.high,
        "tpr1": t.metrics.tpr[0].tpr,
        "tpr1_excess": comparison.tpr_difference.value,
        "leaking": t.metrics.n_leaking,
        "signal_remaining": report.signal_remaining,
        "verdict": report.verdict.status,
    }


def mean_std(values: list[float]) -> str:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return "–"
    return f"{arr.mean():.3f} ± {arr.std(ddof=1) if arr.size > 1 else 0.0:.3f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (setting, model), mean ± std over seeds."""
    head = (
        "| setting | model | forget acc | retain acc | test acc | AUC_U − AUC_ref | TPR@1% excess "
        "| verdicts | time / retrain |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    keys = dict.fromkeys((r["setting"], r["model"]) for r in rows)
    for setting, model in keys:
        group = [r for r in rows if r["setting"] == setting and r["model"] == model]
        verdicts: dict[str, int] = {}
        for r in group:
            verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
        cells = [mean_std([r[k] for r in group]) for k in ("forget_acc", "retain_acc", "test_acc")]
        cells += [mean_std([r["auc_diff"] for r in group])]
        cells += [mean_std([r["tpr1_excess"] for r in group])]
        cells += [", ".join(f"{k} {v}/{len(group)}" for k, v in sorted(verdicts.items()))]
        cells += [mean_std([r.get("time_ratio") for r in group])]
        lines.append(f"| {setting} | {model} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="random10,random20")
    parser.add_argument(
        "--methods",
        default="proxy-distill,nabla-tau-paper,pgu,scrub",
        help="comma-separated; NAME[k=v;k=v] passes options (as --set)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--reuse-retrain", action="store_true", help="keep timed retrains")
    parser.add_argument("--refs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("eval"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    path = args.out / "rows.json"
    for setting in args.settings.split(","):
        manifest = manifest_for(setting, args.out)
        base = {"setting": setting, "seed": None, "time_ratio": None}
        rows.append(
            {
                **base,
                "model": "original",
                **audit(SAMPLE / "model.safetensors", manifest, args.refs),
            }
        )
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            folder = args.out / setting.replace(":", "-") / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            done = folder / "retrain.seconds.txt"  # reuse a retrain timed by an earlier run
            if args.reuse_retrain and done.is_file():
                retrain_seconds = float(done.read_text())
            else:
                retrain_seconds = retrain(manifest, folder / "retrain.safetensors", seed)
                done.write_text(f"{retrain_seconds}\n")
            row = {"setting": setting, "seed": seed, "model": "retrain", "time_ratio": 1.0}
            rows.append(
                {
                    **row,
                    "seconds": retrain_seconds,
                    **audit(folder / "retrain.safetensors", manifest, args.refs),
                }
            )
            for method in args.methods.split(","):
                out = (
                    folder
                    / f"{method.replace('[', '_').replace(']', '').replace(';', '_')}.safetensors"
                )
                try:
                    seconds, stop = unlearn(method, manifest, out, seed)
                except Exception as exc:  # a failing method is a result (e.g. GuardRailError)
                    rows.append(
                        {
                            "setting": setting,
                            "seed": seed,
                            "model": method,
                            "verdict": f"error: {type(exc).__name__}",
                            "error": str(exc),
                        }
                    )
                    continue
                rows.append(
                    {
                        "setting": setting,
                        "seed": seed,
                        "model": method,
                        "seconds": seconds,
                        "time_ratio": seconds / retrain_seconds,
                        "stop_reason": stop,
                        **audit(out, manifest, args.refs),
                    }
                )
            path.write_text(json.dumps(rows, indent=1))
            print(table([r for r in rows if "auc_diff" in r]), flush=True)
    done = [r for r in rows if "auc_diff" in r]
    errors = [r for r in rows if "error" in r]
    text = table(done) + "".join(
        f"\n- {r['setting']} seed {r['seed']} {r['model']}: {r['error']}" for r in errors
    )
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
