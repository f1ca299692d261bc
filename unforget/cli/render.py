"""Results -> rich tables on stderr. No computation here (DESIGN §5)."""

from __future__ import annotations

from typing import Any


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}%"


def print_train(console: Any, report: Any) -> None:
    console.print(f"trained {report.spec.model.name} -> {report.out}")
    table = _table("", "split", "accuracy", "loss", "n")
    for name, s in (("train", report.train), ("held-out", report.heldout)):
        table.add_row(name, _pct(s.accuracy), f"{s.loss:.4f}", str(s.n))
    console.print(table)
    console.print(
        f"{report.result.epochs} epochs in {report.result.seconds:.1f}s "
        f"({report.result.samples_per_second:,.0f} samples/s); sha256 {report.sha256[:16]}"
    )


def print_summary(console: Any, summary: Any) -> None:
    console.print(f"[bold]{summary.path}[/bold]  sha256 {summary.sha256}")
    dtypes = ", ".join(f"{k}×{v}" for k, v in summary.dtypes.items())
    console.print(f"{summary.tensors} tensors, {summary.parameters:,} parameters ({dtypes})")
    spec = summary.spec or {}
    if spec:
        model, data, recipe = spec.get("model", {}), spec.get("data", {}), spec.get("recipe", {})
        console.print(f"model: {model.get('name')} {model.get('kwargs') or ''}")
        console.print(
            f"data: {data.get('path')} (id {data.get('id_column')!r}, label "
            f"{data.get('label_column')!r}, splits {data.get('train_split')}/"
            f"{data.get('heldout_split')})"
        )
        console.print(f"recipe: {recipe}")
    else:
        console.print("no unforget spec in metadata (pass --config to use it)")
    prov = summary.provenance or {}
    if prov:
        console.print(
            "provenance: "
            + ", ".join(
                f"{k}={v}" for k, v in sorted(prov.items()) if not isinstance(v, (dict, list))
            )
        )
    table = _table("deletion ledger", "#", "time", "method", "IDs", "manifest sha256")
    for i, e in enumerate(summary.ledger, start=1):
        method = f"{e.method} (legacy-salted)" if e.legacy else e.method
        table.add_row(str(i), e.time, method, str(e.count), e.manifest_sha256[:16])
    console.print(table if summary.ledger else "deletion ledger: empty")
    if summary.id_check is not None:
        hit = sum(summary.id_check.values())
        console.print(f"--check-ids: {hit} of {len(summary.id_check)} IDs covered by the ledger")
        missing = [i for i, c in summary.id_check.items() if not c]
        if missing:
            console.print(
                "not covered: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            )


def print_apply(console: Any, result: Any) -> None:
    if result.receipt is None:
        console.print(
            f"already applied ({result.already_applied}); nothing to do "
            "(pass --force to run it again)"
        )
        return
    r = result.receipt
    before, after = r.before, r.after
    table = _table("", "", "forget", "retain sample", "held-out")
    for name, snap in (("before", before), ("after", after)):
        table.add_row(
            name,
            _pct(snap.forget.accuracy),
            _pct(snap.retain.accuracy),
            _pct(snap.heldout.accuracy),
        )
    console.print(
        f"{r.provenance.method}: ran on {r.provenance.manifest_count} forget samples in "
        f"{r.seconds:.1f}s ({r.steps} steps, stopped: {r.stop_reason})"
    )
    console.print(table)
    if after.removed_classes is not None and after.other_classes is not None:
        console.print(
            f"removed class(es) {', '.join(r.removed_classes)}: held-out accuracy "
            f"{_pct(before.removed_classes.accuracy)} -> "
            f"{_pct(after.removed_classes.accuracy)}; other classes "
            f"{_pct(before.other_classes.accuracy)} -> "
            f"{_pct(after.other_classes.accuracy)}"
        )
    console.print(f"wrote {result.out} (sha256 {r.output_sha256[:16]})")
    console.print(f"receipt {result.receipt_path}")
    if result.assessment is not None:
        for line in assessment_lines(result.assessment):
            console.print(line, markup=False)


def assessment_lines(a: Any) -> list[str]:
    """One plain line on whether the forget set now looks like unseen data, then warnings."""
    numbers = (
        f"forget accuracy {_pct(a.forget_accuracy)} vs held-out {_pct(a.unseen_accuracy)} "
        f"(alike within ±{100 * a.tolerance:.1f} points)"
    )
    lines = {
        "like_unseen": f"The forget set now looks like unseen data: {numbers}.",
        "remembered": f"WARNING: the forget set may still look like training data: {numbers}. "
        "Accuracy is a coarse sign; audit the result (unforget audit), and if it does not "
        "PASS re-run apply on the original checkpoint with a longer loop (proxy-distill: --set "
        "budget=0.3, twice the default's) "
        "or --method retrain.",
        "over_forgotten": f"WARNING: the forget set now looks less familiar than unseen data: "
        f"{numbers}. Such over-forgetting is itself detectable (audit FAIL-OVER); re-run "
        "apply on the original checkpoint with a gentler setting (e.g. a lower --set lr=...).",
    }
    out = [lines[a.state]]
    if a.collapsed:
        out.append(
            f"WARNING: held-out accuracy fell from {_pct(a.heldout_before)} to "
            f"{_pct(a.heldout_after)}: the model lost more than the forget set; do not deploy "
            "it, re-run apply with a gentler setting or --method retrain."
        )
    return out


def print_methods(console: Any, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        console.print(f"[bold]{row['name']}[/bold]  {row['summary']}")
        console.print(f"  needs: {', '.join(row['needs'])}; paper: {row['paper']}")
        if row["options"]:
            console.print("  options (--set KEY=VALUE):")
        for o in row["options"]:
            help_text = f"  {o['help']}" if o["help"] else ""
            console.print(f"    {o['name']}={o['default']}{help_text}", markup=False)
