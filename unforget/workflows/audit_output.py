"""Audit results -> JSON (schema ``unforget.audit/2``), per-sample CSV, ROC plot, rich table.

No computation here: everything shown was computed by :mod:`unforget.workflows.audit`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from unforget.errors import InputError, param
from unforget.io.fileio import atomic_write
from unforget.mia.results import as_json
from unforget.workflows.audit import SCHEMA, AuditReport, ModelResult

DISCLAIMER = (
    "A PASS is evidence against the named attack at the stated operating point, "
    "not proof of erasure."
)


def _model_json(result: ModelResult | None) -> Any:
    if result is None:
        return None
    return {
        "name": result.name,
        "role": result.role,
        "metrics": as_json(result.metrics) if result.metrics else None,
        "utility": as_json(result.utility),
        "legacy": {
            "loss_attack_auc": round(result.loss_attack_auc, 6),
            "lr_attack_accuracy": (
                None if result.lr_attack_accuracy is None else round(result.lr_attack_accuracy, 6)
            ),
        },
    }


def to_json(report: AuditReport) -> dict[str, Any]:
    """The versioned JSON object; deterministic for a fixed ``--seed`` apart from ``timing``."""
    return {
        "schema": SCHEMA,
        "inputs": report.inputs,
        "settings": report.settings,
        "sample_size": as_json(report.sample),
        "attack": report.attack,
        "references": report.k,
        "target": _model_json(report.target),
        "positive_control": _model_json(report.original),
        "negative_controls": [_model_json(r) for r in report.references],
        "comparison": as_json(report.comparison) if report.comparison else None,
        "positive_comparison": as_json(report.positive_comparison)
        if report.positive_comparison
        else None,
        "signal_remaining": None
        if report.signal_remaining is None
        else round(report.signal_remaining, 6),
        "diagnostics": list(report.diagnostics),
        "notes": list(report.notes),
        "verdict": as_json(report.verdict),
        "conclusion": dict(
            zip(
                ("sentence", "next_step"),
                conclusion(report.verdict.status, report.verdict.reasons, report.verdict.evidence),
                strict=True,
            )
        ),
        "exit_code": report.verdict.exit_code,
        "disclaimer": DISCLAIMER,
        "timing": {k: round(v, 3) for k, v in report.timing.items()},
    }


def write_csv(report: AuditReport, path: Path) -> None:
    """Per-sample scores: id, set, score (higher = more member-like), p-value, leaking flag.

    IDs are written as the user gave them; this file stays on the user's machine.
    """
    if report.per_sample is None:
        raise InputError("no per-sample scores: the audit stopped before scoring")
    ps = report.per_sample
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "set", "score", "conformal_p", "leaking"])
    for i, identifier in enumerate(ps.ids):
        forget = bool(ps.is_forget[i])
        writer.writerow(
            [
                identifier,
                "forget" if forget else "heldout",
                f"{ps.scores[i]:.9g}",
                f"{ps.pvalues[i]:.6g}" if forget else "",
                int(ps.leaking[i]),
            ]
        )
    atomic_write(path, buffer.getvalue().encode())


def write_plot(report: AuditReport, path: Path) -> None:
    """Log-log ROC of the target against its controls (needs the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError(f"{param('plot')} needs matplotlib: pip install 'unforget[plot]'") from exc
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr) in report.roc.items():
        style = {"target": ("C0", 2.0), "original": ("C3", 1.5)}.get(name, ("0.6", 0.8))
        ax.plot(
            fpr,
            tpr,
            color=style[0],
            lw=style[1],
            label=name if not name.startswith("reference") or name.endswith(" 1") else None,
        )
    ax.plot([1e-4, 1], [1e-4, 1], "k--", lw=0.8, label="chance")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(1e-3, 1),
        ylim=(1e-3, 1),
        xlabel="false positive rate (held-out)",
        ylabel="true positive rate (forget)",
        title=f"{report.attack} audit: {report.verdict.status}",
    )
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def _fmt(estimate: Any) -> str:
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def _column(result: ModelResult | None, refs: tuple[ModelResult, ...]) -> list[str]:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    if result is None and refs:
        ms = [r.metrics for r in refs if r.metrics]
        return [
            f"{mean([m.auc.value for m in ms]):.3f} (mean of {len(ms)})",
            f"{mean([m.tpr[0].tpr for m in ms]):.1%}",
            f"{mean([m.tpr[1].tpr for m in ms]):.2%}",
            f"p={min(m.tail_upper.p_value for m in ms):.2g} (min)",
            f"{mean([m.n_leaking for m in ms]):.1f}",
            f"{mean([r.utility.forget for r in refs]):.1%} / "
            f"{mean([r.utility.retain for r in refs]):.1%} / "
            f"{mean([r.utility.heldout for r in refs]):.1%}",
        ]
    if result is None or result.metrics is None:
        return ["-"] * 6
    m = result.metrics
    return [
        _fmt(m.auc),
        f"{m.tpr[0].tpr:.1%} [{m.tpr[0].low:.1%}, {m.tpr[0].high:.1%}]",
        f"{m.tpr[1].tpr:.2%}" + ("" if m.tpr[1].resolvable else " (unresolvable)"),
        f"up p={m.tail_upper.p_value:.2g}, down p={m.tail_lower.p_value:.2g}",
        str(m.n_leaking),
        f"{result.utility.forget:.1%} / {result.utility.retain:.1%} / {result.utility.heldout:.1%}",
    ]


def print_audit(console: Any, report: AuditReport) -> None:
    from rich.table import Table

    for note in report.notes:
        console.print(f"note: {note}")
    if report.target is not None:
        table = Table(show_edge=False, pad_edge=False)
        table.add_column(f"{report.attack}, K={report.k}", justify="left")
        for title in ("unlearned", "original (+control)", "references (−control)"):
            table.add_column(title, justify="right")
        rows = [
            "AUC F vs H",
            "TPR@1%FPR",
            "TPR@0.1%FPR",
            "tail tests",
            "leaking samples",
            "accuracy F / R / H",
        ]
        cols = [
            _column(report.target, ()),
            _column(report.original, ()),
            _column(None, report.references),
        ]
        for i, name in enumerate(rows):
            table.add_row(name, *(c[i] for c in cols))
        console.print(table)
        if report.signal_remaining is not None:
            console.print(f"signal remaining: {report.signal_remaining:.0%} of the original's")
        c = report.comparison
        if c is not None:
            t = c.tpr_difference
            console.print(
                f"against the references (paired): AUC − AUC_ref {_fmt(c.auc_difference)}, "
                f"TPR@{c.fpr:.0%} − TPR_ref {t.value:+.1%} [{t.low:+.1%}, {t.high:+.1%}]"
            )
        lr = report.target.lr_attack_accuracy
        console.print(
            f"legacy (papers): loss-attack AUC {report.target.loss_attack_auc:.3f}, "
            f"LR attack accuracy {'n/a (too few rows)' if lr is None else f'{lr:.3f}'}"
        )
    v = report.verdict
    colour = {"PASS": "green", "FAIL-LEAK": "red", "FAIL-OVER": "red"}.get(v.status, "yellow")
    reasons = f" ({', '.join(v.reasons)})" if v.reasons else ""
    console.print(f"[bold {colour}]verdict: {v.status}[/]{reasons}  exit {v.exit_code}")
    console.print(v.explanation)
    sentence, step = conclusion(v.status, v.reasons, v.evidence)
    console.print(f"{sentence} Next step: {step}", markup=False)


def conclusion(status: str, reasons: tuple[str, ...], evidence: str) -> tuple[str, str]:
    """One plain sentence for a compliance reader, and the next step, for a verdict.

    Written from the status and reason codes only, so it never contradicts the verdict; an
    unknown reason code falls back to the status's general advice.
    """
    if status == "PASS" and evidence == "strong":
        return (
            "The audit found no sign that the model still remembers the deleted samples, and "
            "it did see them in the original model, so it could have found a leak.",
            "keep this report with the deletion request and the apply receipt.",
        )
    if status == "PASS":
        return (
            "The audit found no sign that the model still remembers the deleted samples, but "
            "it had no working positive control, so this is weak evidence.",
            "audit again with the original model (--original MODEL) and more references "
            "(--refs 8).",
        )
    if status == "FAIL-LEAK":
        return (
            "The model still behaves as if it were trained on the deleted samples: the "
            "deletion is not demonstrated.",
            "re-run apply on the original checkpoint with the default method (proxy-distill) "
            "or --method retrain for exact retraining, then audit again.",
        )
    if status == "FAIL-OVER":
        return (
            "The deleted samples now look less familiar to the model than data it never saw, "
            "which itself reveals that they were removed.",
            "re-run apply on the original checkpoint with a gentler setting (e.g. a lower "
            "--set lr=...) or --method retrain, then audit again.",
        )
    steps = {
        "no_references": "add references: --refs 8 (or --retrained MODEL).",
        "forget_set_too_small": "audit a larger batch of deletions together (a bigger forget "
        "set), or accept a wider margin deliberately (--delta-auc).",
        "heldout_too_small": "add held-out rows the model never trained on to the data.",
        "leak_below_margin": "a few forget samples still look like members (the memorised "
        "tail): re-run apply on the original checkpoint with a longer loop, --set budget=0.3 "
        "(proxy-distill spends the extra steps on the samples furthest from their targets), "
        "or --method retrain, then audit again.",
    }
    step = next((steps[r] for r in reasons if r in steps), None)
    return (
        "The audit could not decide whether the model still remembers the deleted samples.",
        step or "add references to narrow the intervals: --refs 8.",
    )
