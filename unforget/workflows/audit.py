"""``unforget audit``: does the forget set still look like training members?

Flow (audit.md): resolve inputs → pre-check of |F|, |H| and K (before any training; it says
whether a PASS is reachable but never stops the audit: small requests are attacked too) →
reference models → signals (torch) → :func:`unforget.mia.scoring.audit_signals` (scores,
metrics, comparison with the negative controls, verdict; numpy). The primary attack is fixed by K
before anything is scored (RMIA below 16 references, LiRA from 16); population-loss numbers are
reported beside it for comparison with papers, never used for the verdict.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from unforget.errors import InputError, param
from unforget.io import checkpoint as ckpt_io
from unforget.mia import attacks, metrics
from unforget.mia.power import sample_size_check
from unforget.mia.results import (
    AttackMetrics,
    ReferenceComparison,
    SampleSizeCheck,
    Verdict,
    VerdictRule,
)
from unforget.mia.scoring import FPRS, audit_signals
from unforget.mia.signals import Signals, compute_signals
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent
from unforget.workflows import ref_budget, references
from unforget.workflows.workspace import (
    Deletion,
    Workspace,
    open_request,
    read_checkpoint,
    weights_sha256,
)

SCHEMA = "unforget.audit/2"  # /2: verdict relative to the references (comparison objects)


@dataclass(frozen=True, kw_only=True)
class AuditRequest:
    ckpt: Path
    manifest: Path
    original: Path | None = None
    retrained: tuple[Path, ...] = ()
    refs: int | None = None  # None = auto
    budget_minutes: float = 10.0
    seed: int = 0
    rule: VerdictRule = field(default_factory=VerdictRule)
    config: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    accept_data_change: bool = False
    n_boot: int = 1000
    jobs: int = 1  # local processes training references
    ref_source: str = "retain"  # "retain" (per request) or "pool" (trained once; see references)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise InputError(f"{param('jobs')} must be at least 1, not {self.jobs}")
        if self.ref_source not in references.SOURCES:
            raise InputError(
                f"{param('ref_source')} must be one of {', '.join(references.SOURCES)}, "
                f"not {self.ref_source!r}"
            )


@dataclass(frozen=True)
class Utility:
    """Accuracy of one model on F, a retain sample and H."""

    forget: float
    retain: float
    heldout: float


@dataclass(frozen=True)
class ModelResult:
    """One audited model: its role, attack metrics (primary attack) and utility."""

    name: str
    role: str  # "target", "original" (positive control), "reference" (negative control)
    metrics: AttackMetrics | None
    utility: Utility
    loss_attack_auc: float  # legacy population attack: score = −loss
    # legacy: logistic regression on loss, balanced (papers' number); None below 5 rows a side
    lr_attack_accuracy: float | None


@dataclass(frozen=True)
class PerSample:
    """Per-sample scores of the target (for the CSV; never in JSON)."""

    ids: tuple[str, ...]
    is_forget: np.ndarray
    scores: np.ndarray
    pvalues: np.ndarray  # conformal p-values for F, NaN for H
    leaking: np.ndarray  # bool, BH-flagged forget samples


@dataclass(frozen=True)
class AuditReport:
    inputs: dict[str, Any]
    settings: dict[str, Any]
    sample: SampleSizeCheck
    attack: str
    k: int
    target: ModelResult | None
    original: ModelResult | None
    references: tuple[ModelResult, ...]
    comparison: ReferenceComparison | None  # target vs negative controls (None when K < 2)
    positive_comparison: ReferenceComparison | None  # original vs the same controls
    signal_remaining: float | None
    diagnostics: tuple[str, ...]
    verdict: Verdict
    timing: dict[str, float]
    notes: tuple[str, ...]
    per_sample: PerSample | None = field(default=None, repr=False)
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, kw_only=True)
class _Scored:
    """What :func:`_score` hands back to :func:`run_audit` (the report's scoring half)."""

    attack: str
    k: int
    target: ModelResult
    original: ModelResult | None
    references: tuple[ModelResult, ...]
    comparison: ReferenceComparison | None
    positive_comparison: ReferenceComparison | None
    signal_remaining: float | None
    sample: SampleSizeCheck
    verdict: Verdict
    per_sample: PerSample
    roc: dict[str, tuple[np.ndarray, np.ndarray]]


Notice = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def run_audit(
    request: AuditRequest,
    *,
    precision: Precision,
    on_progress: ProgressFn = silent,
    on_notice: Notice = lambda _: None,
    on_warning: Notice = _stderr,
) -> AuditReport:
    """Audit ``request.ckpt`` against ``request.manifest`` (see module docstring).

    ``on_notice`` gets progress lines for humans; ``on_warning`` gets what must never be silent
    (a cached reference that failed verification), by default on stderr.
    """
    started = time.perf_counter()
    timing: dict[str, float] = {}
    ws, manifest, forget = open_request(
        request.ckpt,
        request.manifest,
        config=request.config,
        flags=request.flags,
        accept_data_change=request.accept_data_change,
    )
    deletion = ws.deletion(forget)
    heldout, notes = _heldout_rows(ws, deletion, request.ckpt)
    retain = deletion.retain
    inputs = _inputs(request, ws, manifest.sha256, len(forget), len(heldout))
    original_path = request.original or _original_from_receipt(request.ckpt, notes)
    k_planned = request.refs if request.refs is not None else ref_budget.CHOICES[0]
    sample = _precheck(
        len(forget),
        len(heldout),
        k=k_planned + len(request.retrained),
        request=request,
        on_notice=on_notice,
    )
    t0 = time.perf_counter()
    chosen = _references(request, ws, retain, precision, on_progress, on_notice, on_warning)
    if chosen is None:
        return _early(request, inputs, sample, notes, timing, started)
    refs, records = chosen
    timing["references_seconds"] = time.perf_counter() - t0
    inputs["references"] = [r.as_json() for r in records]
    timing["references_trained"] = sum(r.status != "cached" for r in records)
    notes += [
        f"reference {r.identity.key[:12]}… rebuilt: {r.problem}" for r in records if r.problem
    ]
    refs += [ws.load_model(p, precision) for p in request.retrained]
    diagnostics = tuple(d for p in request.retrained for d in _recipe_check(ws, p))
    target = ws.load_model(None, precision)
    original = ws.load_model(original_path, precision) if original_path else None
    t0 = time.perf_counter()
    scored = _score(
        ws,
        request=request,
        forget=forget,
        heldout=heldout,
        deletion=deletion,
        target=target,
        original=original,
        refs=refs,
        precision=precision,
        diagnostics=diagnostics,
    )
    timing["scoring_seconds"] = time.perf_counter() - t0
    timing["total_seconds"] = time.perf_counter() - started
    if original_path:
        inputs["original"] = {"path": str(original_path), "sha256": weights_sha256(original_path)}
    inputs["retrained"] = [{"path": str(p), "sha256": weights_sha256(p)} for p in request.retrained]
    return AuditReport(
        inputs=inputs,
        settings=_settings(request, scored.attack, scored.k),
        sample=scored.sample,
        attack=scored.attack,
        k=scored.k,
        target=scored.target,
        original=scored.original,
        references=scored.references,
        comparison=scored.comparison,
        positive_comparison=scored.positive_comparison,
        signal_remaining=scored.signal_remaining,
        diagnostics=diagnostics,
        verdict=scored.verdict,
        timing=timing,
        notes=tuple(notes),
        per_sample=scored.per_sample,
        roc=scored.roc,
    )


def _precheck(
    n_forget: int, n_heldout: int, *, k: int, request: AuditRequest, on_notice: Notice
) -> SampleSizeCheck:
    """Say before any training whether a PASS is reachable, and what would make it so.

    The attack runs either way (a small request can still be FAIL-LEAK, audit.md "Verdict").
    """
    check = sample_size_check(n_forget, n_heldout, k=k, rule=request.rule)
    if not check.pass_reachable:
        on_notice(
            f"a PASS is out of reach with |F|={n_forget}, |H|={n_heldout}, K={k} "
            f"(δ = {request.rule.delta_auc}); the attack still runs and can find a leak: "
            f"{check.advice}"
        )
    return check


def _references(
    request: AuditRequest,
    ws: Workspace,
    retain: np.ndarray,
    precision: Precision,
    on_progress: ProgressFn,
    on_notice: Notice,
    on_warning: Notice,
) -> tuple[list[nn.Module], list[references.Record]] | None:
    """Choose K (estimate printed first), then load the verified or train the missing references.

    Returns ``None`` when ``--refs auto`` cannot afford the minimum K for a PASS (the one-line
    reason has been given to ``on_notice``; the audit is INCONCLUSIVE without training).
    """
    cache = request.cache_dir or references.default_cache_dir()
    split, rows = references.training_rows(ws, request.ref_source, retain)
    most = request.refs if request.refs is not None else ref_budget.CHOICES[0]
    ids = references.identities(
        ws,
        source=request.ref_source,
        rows=rows,
        split=split,
        seeds=references.reference_seeds(most, seed=request.seed),
    )
    measured: list[ref_budget.StepTiming] = []

    def seconds_per_reference() -> float:
        measured.append(ref_budget.measure_steps(ws, split=split, rows=rows, precision=precision))
        return measured[-1].seconds_per_reference

    plan = ref_budget.choose(
        request.refs,
        cached=lambda k: sum(references.is_cached(cache, i) for i in ids[:k]),
        seconds_per_reference=seconds_per_reference,
        budget_minutes=request.budget_minutes,
        jobs=request.jobs,
    )
    if not plan.fits:
        on_notice(f"references: {plan.reason}")
        return None
    on_notice(ref_budget.describe(plan, measured[-1] if measured else None))
    return references.train_references(
        ws,
        identities=ids[: plan.k],
        rows=rows,
        cache_dir=cache,
        precision=precision,
        jobs=request.jobs,
        on_progress=on_progress,
        on_warning=on_warning,
    )


def _heldout_rows(ws: Workspace, deletion: Deletion, ckpt: Path) -> tuple[np.ndarray, list[str]]:
    """Evidence rows of H: never trained on, not read by ``apply``, restricted to F's classes.

    Restricting to F's classes keeps whole-class deletions comparable (audit.md, "Pitfalls").
    """
    notes = []
    rows = deletion.evidence
    read = _receipt_reference_ids(ckpt)
    if read:
        mask = np.isin(np.asarray(ws.heldout.ids, dtype=object)[rows], list(read))
        if mask.any():
            notes.append(f"excluded {int(mask.sum())} held-out rows read by apply")
        rows = rows[~mask]
    classes = np.unique(ws.train.labels[deletion.forget])
    keep = np.isin(ws.heldout.labels[rows], classes)
    if not keep.all():
        notes.append(f"held-out restricted to the forget set's {len(classes)} class(es)")
    return rows[keep], notes


def _receipt_reference_ids(ckpt: Path) -> set[str]:
    path = ckpt.with_name(ckpt.name + ".receipt.json")
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text()).get("reference_ids", []))
    except (json.JSONDecodeError, OSError, AttributeError) as exc:
        raise InputError(f"receipt {path} is unreadable ({exc})") from exc


def _original_from_receipt(ckpt: Path, notes: list[str]) -> Path | None:
    """The receipt's input checkpoint, when it sits beside it with a matching hash."""
    path = ckpt.with_name(ckpt.name + ".receipt.json")
    if not path.is_file():
        return None
    receipt = json.loads(path.read_text())
    given = Path(receipt.get("input_path", ""))
    # As written (absolute, or relative to where apply ran), or beside the audited checkpoint.
    for candidate in (given, ckpt.parent / given, ckpt.parent / given.name):
        if candidate.exists() and weights_sha256(candidate) == receipt.get("input_sha256"):
            notes.append(f"positive control: {candidate} (input named in the receipt)")
            return candidate
    notes.append("the receipt's input checkpoint was not found; no positive control")
    return None


def _recipe_check(ws: Workspace, path: Path) -> list[str]:
    """A user-given retrained model must share the target's recipe: else a diagnostic."""
    meta = read_checkpoint(path).meta_json(ckpt_io.KEY_SPEC) or {}
    theirs = meta.get("recipe", {})
    ours = json.loads(ws.spec.to_json())["recipe"]
    differs = sorted(k for k in ours if k != "seed" and theirs.get(k) != ours[k])
    return [f"recipe_mismatch:{path.name}:{','.join(differs)}"] if differs else []


def _signals(
    ws: Workspace, model: nn.Module, rows_f: np.ndarray, rows_h: np.ndarray, precision: Precision
) -> Signals:
    hflip = "hflip" in ws.spec.recipe.augmentation
    parts = []
    for split, rows in ((ws.train, rows_f), (ws.heldout, rows_h)):
        loader = ws.loader(split, rows, device=precision.device)
        parts.append(compute_signals(model, loader, precision=precision, hflip=hflip))
    return Signals.concat(parts)


def _score(
    ws: Workspace,
    *,
    request: AuditRequest,
    forget: np.ndarray,
    heldout: np.ndarray,
    deletion: Deletion,
    target: nn.Module,
    original: nn.Module | None,
    refs: list[nn.Module],
    precision: Precision,
    diagnostics: tuple[str, ...],
) -> _Scored:
    """Query every model (torch), then run the numpy audit of :mod:`unforget.mia.scoring`."""
    rng = np.random.default_rng(request.seed)
    retain_sample = deletion.retain_sample(rng)
    is_forget = np.r_[np.ones(len(forget), bool), np.zeros(len(heldout), bool)]
    sig_t = _signals(ws, target, forget, heldout, precision)
    sig_o = _signals(ws, original, forget, heldout, precision) if original else None
    sig_r = [_signals(ws, m, forget, heldout, precision) for m in refs]
    scored = audit_signals(
        target=sig_t,
        original=sig_o,
        references=sig_r,
        is_forget=is_forget,
        rule=request.rule,
        rng=rng,
        n_boot=request.n_boot,
        diagnostics=diagnostics,
    )

    def result(
        name: str, role: str, model: nn.Module, sig: Signals, m: AttackMetrics | None
    ) -> ModelResult:
        return ModelResult(
            name=name,
            role=role,
            metrics=m,
            utility=Utility(
                forget=float(sig.correct[is_forget].mean()),
                retain=_accuracy(ws, model, retain_sample, precision),
                heldout=float(sig.correct[~is_forget].mean()),
            ),
            loss_attack_auc=metrics.auc(-sig.loss[is_forget], -sig.loss[~is_forget]),
            lr_attack_accuracy=_lr_attack_accuracy(sig, is_forget, rng),
        )

    original_result = None
    if original is not None and sig_o is not None:
        original_result = result("original", "original", original, sig_o, scored.original)
    ref_results = tuple(
        result(f"reference {i + 1}", "reference", refs[i], sig_r[i], m)
        for i, m in enumerate(scored.controls)
    )
    remaining = None
    if scored.original is not None and scored.comparison is not None:
        remaining = metrics.signal_remaining(
            scored.target.auc.value, scored.original.auc.value, scored.comparison.auc_reference
        )
    roc = {
        name: metrics.roc_curve(s[is_forget], s[~is_forget])
        for name, s in scored.roc_scores.items()
    }
    return _Scored(
        attack=scored.attack,
        k=scored.k,
        target=result("target", "target", target, sig_t, scored.target),
        original=original_result,
        references=ref_results,
        comparison=scored.comparison,
        positive_comparison=scored.positive_comparison,
        signal_remaining=remaining,
        sample=scored.sample,
        verdict=scored.verdict,
        per_sample=_per_sample(ws, forget, heldout, scored.target_scores, scored.target),
        roc=roc,
    )


LR_FOLDS = 5  # cross-validation folds of the legacy loss attack (one row per fold at least)


def _lr_attack_accuracy(
    sig: Signals, is_forget: np.ndarray, rng: np.random.Generator
) -> float | None:
    """The papers' balanced logistic-regression attack accuracy, or None when either side has
    fewer rows than folds (a tiny request: the RMIA verdict does not depend on this number)."""
    if min(int(is_forget.sum()), int((~is_forget).sum())) < LR_FOLDS:
        return None
    return attacks.logistic_regression_mia_accuracy(
        sig.loss[is_forget], sig.loss[~is_forget], rng=rng, folds=LR_FOLDS
    )


def _accuracy(ws: Workspace, model: nn.Module, rows: np.ndarray, precision: Precision) -> float:
    loader = ws.loader(ws.train, rows, device=precision.device)
    return float(compute_signals(model, loader, precision=precision).correct.mean())


def _per_sample(
    ws: Workspace, forget: np.ndarray, heldout: np.ndarray, scores: np.ndarray, m: AttackMetrics
) -> PerSample:
    ids = tuple(ws.train.ids[r] for r in forget) + tuple(ws.heldout.ids[r] for r in heldout)
    pvalues = np.full(len(ids), np.nan)
    pvalues[: len(forget)] = m.conformal_p
    leaking = np.zeros(len(ids), bool)
    leaking[list(m.leaking)] = True
    is_forget = np.r_[np.ones(len(forget), bool), np.zeros(len(heldout), bool)]
    return PerSample(ids=ids, is_forget=is_forget, scores=scores, pvalues=pvalues, leaking=leaking)


def _inputs(
    request: AuditRequest, ws: Workspace, manifest_sha: str, n_f: int, n_h: int
) -> dict[str, Any]:
    return {
        "checkpoint": {"path": str(request.ckpt), "sha256": ws.checkpoint.sha256},
        "manifest": {"path": str(request.manifest), "sha256": manifest_sha, "count": n_f},
        "data": {
            "path": ws.spec.data.path,
            "fingerprint": ws.spec.train_fingerprint,
            "changed": ws.data_changed,
        },
        "heldout_evidence_rows": n_h,
    }


def _settings(request: AuditRequest, attack: str, k: int) -> dict[str, Any]:
    rule = request.rule
    return {
        "alpha": rule.alpha,
        "delta_auc": rule.delta_auc,
        "tpr_margin": rule.tpr_margin,
        "fpr": rule.fpr,
        "fprs": list(FPRS),
        "seed": request.seed,
        "refs": k,
        "refs_requested": "auto" if request.refs is None else request.refs,
        "ref_source": request.ref_source,
        "attack": attack,
        "bootstrap": request.n_boot,
    }


def _early(
    request: AuditRequest,
    inputs: dict[str, Any],
    sample: SampleSizeCheck,
    notes: list[str],
    timing: dict[str, float],
    started: float,
) -> AuditReport:
    """INCONCLUSIVE before any training: ``--refs auto`` cannot afford the minimum K for a PASS
    within ``--budget`` (nothing was trained; the message says what budget would do)."""
    explanation = (
        f"--refs auto: even {ref_budget.MIN_REFS_FOR_PASS} references (the minimum for a PASS) "
        f"do not fit the {request.budget_minutes:g}-minute --budget; no reference models were "
        "trained (raise --budget, add --jobs, or pass --refs K)."
    )
    verdict = Verdict(
        status="INCONCLUSIVE",
        exit_code=5,
        reasons=("reference_budget",),
        evidence="none",
        min_detectable_auc=sample.min_detectable_auc_delta,
        explanation=explanation,
    )
    timing["total_seconds"] = time.perf_counter() - started
    return report_without_models(
        verdict,
        sample=sample,
        inputs=inputs,
        settings=_settings(request, "none", 0),
        timing=timing,
        notes=tuple(notes),
    )


def report_without_models(
    verdict: Verdict,
    *,
    sample: SampleSizeCheck,
    inputs: dict[str, Any],
    settings: dict[str, Any],
    timing: dict[str, float],
    notes: tuple[str, ...] = (),
    attack: str = "none",
    k: int = 0,
) -> AuditReport:
    """A report that carries a verdict but no model was scored (an audit stopped before any
    training, or a stand-in report with a chosen verdict for exercising the CLI's exit codes)."""
    return AuditReport(
        inputs=inputs,
        settings=settings,
        sample=sample,
        attack=attack,
        k=k,
        target=None,
        original=None,
        references=(),
        comparison=None,
        positive_comparison=None,
        signal_remaining=None,
        diagnostics=(),
        verdict=verdict,
        timing=timing,
        notes=notes,
    )
