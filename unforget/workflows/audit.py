"""``unforget audit``: does the forget set still look like training members?

Flow (audit.md): resolve inputs → sample-size check (before any training) → reference models →
signals (torch) → scores (numpy) → metrics (numpy) → verdict. The primary attack is fixed by K
before anything is scored (RMIA below 16 references, LiRA from 16); population-loss numbers are
reported beside it for comparison with papers, never used for the verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from unforget.audit import attacks, metrics
from unforget.audit.results import (
    AttackMetrics,
    AttackScores,
    Estimate,
    SampleSizeCheck,
    Verdict,
    VerdictRule,
)
from unforget.audit.signals import Signals, compute_signals
from unforget.audit.verdict import decide, sample_size_check
from unforget.data.loaders import make_loader, source
from unforget.errors import InputError
from unforget.io import checkpoint as ckpt_io
from unforget.io.fileio import sha256_file
from unforget.io.manifest import read_manifest
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent
from unforget.workflows import references
from unforget.workflows.workspace import Workspace, open_workspace

SCHEMA = "unforget.audit/1"
FPRS = (0.01, 0.001)
RETAIN_SAMPLE = 2048


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
    lr_attack_accuracy: float  # legacy: logistic regression on loss, balanced (papers' number)


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
    auc_difference: Estimate | None
    signal_remaining: float | None
    diagnostics: tuple[str, ...]
    verdict: Verdict
    timing: dict[str, float]
    notes: tuple[str, ...]
    per_sample: PerSample | None = field(default=None, repr=False)
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)


Notice = Callable[[str], None]


def run_audit(
    request: AuditRequest,
    *,
    precision: Precision,
    on_progress: ProgressFn = silent,
    on_notice: Notice = lambda _: None,
) -> AuditReport:
    """Audit ``request.ckpt`` against ``request.manifest`` (see module docstring)."""
    started = time.perf_counter()
    timing: dict[str, float] = {}
    manifest = read_manifest(request.manifest)
    ws = open_workspace(
        request.ckpt,
        config=request.config,
        flags=request.flags,
        accept_data_change=request.accept_data_change,
    )
    forget = ws.forget_rows(manifest)
    heldout, notes = _heldout_rows(ws, forget, request.ckpt)
    retain = ws.retain_rows(forget)
    sample = sample_size_check(len(forget), len(heldout), request.rule)
    inputs = _inputs(request, ws, manifest.sha256, len(forget), len(heldout))
    original_path = request.original or _original_from_receipt(request.ckpt, notes)
    if not sample.pass_reachable:
        on_notice(
            f"a PASS is impossible at these margins with |F|={len(forget)} and "
            f"|H|={len(heldout)}: smallest detectable AUC effect "
            f"{sample.min_detectable_auc_delta:.3f} (δ = {request.rule.delta_auc})"
        )
        if request.refs is None and not request.retrained:
            return _early(request, inputs, sample, notes, timing, started)
    cache = request.cache_dir or references.default_cache_dir()
    plan = references.plan(
        request.refs,
        ws=ws,
        retain=retain,
        seed=request.seed,
        budget_minutes=request.budget_minutes,
        cache_dir=cache,
        precision=precision,
    )
    to_train = plan.k - plan.cached
    on_notice(
        f"references: K={plan.k} ({plan.reason}); {plan.cached} cached, {to_train} to "
        f"train, about {to_train * plan.seconds_per_reference / 60:.1f} min"
    )
    t0 = time.perf_counter()
    refs = references.ensure(
        plan.k,
        ws=ws,
        retain=retain,
        seed=request.seed,
        cache_dir=cache,
        precision=precision,
        on_progress=on_progress,
    )
    timing["references_seconds"] = time.perf_counter() - t0
    refs += [ws.load_model(p, precision) for p in request.retrained]
    diagnostics = tuple(d for p in request.retrained for d in _recipe_check(ws, p))
    target = ws.load_model(None, precision)
    original = ws.load_model(original_path, precision) if original_path else None
    t0 = time.perf_counter()
    report = _score(
        request, ws, forget, heldout, retain, target, original, refs, sample, precision, diagnostics
    )
    timing["scoring_seconds"] = time.perf_counter() - t0
    timing["total_seconds"] = time.perf_counter() - started
    if original_path:
        inputs["original"] = {"path": str(original_path), "sha256": sha256_file(original_path)}
    inputs["retrained"] = [{"path": str(p), "sha256": sha256_file(p)} for p in request.retrained]
    return AuditReport(
        inputs=inputs,
        settings=_settings(request, report["attack"], plan.k),
        sample=sample,
        timing=timing,
        notes=tuple(notes),
        **report,
    )


def _heldout_rows(ws: Workspace, forget: np.ndarray, ckpt: Path) -> tuple[np.ndarray, list[str]]:
    """Evidence rows of H: never trained on, not read by ``apply``, restricted to F's classes.

    Restricting to F's classes keeps whole-class deletions comparable (audit.md, "Pitfalls").
    """
    notes = []
    rows = ws.evidence_rows()
    read = _receipt_reference_ids(ckpt)
    if read:
        mask = np.isin(np.asarray(ws.heldout.ids, dtype=object)[rows], list(read))
        if mask.any():
            notes.append(f"excluded {int(mask.sum())} held-out rows read by apply")
        rows = rows[~mask]
    classes = np.unique(ws.train.labels[forget])
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
        if candidate.is_file() and sha256_file(candidate) == receipt.get("input_sha256"):
            notes.append(f"positive control: {candidate} (input named in the receipt)")
            return candidate
    notes.append("the receipt's input checkpoint was not found; no positive control")
    return None


def _recipe_check(ws: Workspace, path: Path) -> list[str]:
    """A user-given retrained model must share the target's recipe: else a diagnostic."""
    meta = ckpt_io.load_checkpoint(path).meta_json(ckpt_io.KEY_SPEC) or {}
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
        loader = make_loader(
            source(split, rows, spec=ws.spec.data, info=ws.info, encoder=ws.encoder),
            batch_size=512,
            shuffle=False,
            seed=0,
            device=precision.device,
        )
        parts.append(compute_signals(model, loader, precision=precision, hflip=hflip))
    return Signals.concat(parts)


def _score(
    request: AuditRequest,
    ws: Workspace,
    forget: np.ndarray,
    heldout: np.ndarray,
    retain: np.ndarray,
    target: nn.Module,
    original: nn.Module | None,
    refs: list[nn.Module],
    sample: SampleSizeCheck,
    precision: Precision,
    diagnostics: tuple[str, ...],
) -> dict[str, Any]:
    rng = np.random.default_rng(request.seed)
    retain_sample = np.sort(rng.choice(retain, size=min(RETAIN_SAMPLE, len(retain)), replace=False))
    is_forget = np.r_[np.ones(len(forget), bool), np.zeros(len(heldout), bool)]
    sig_t = _signals(ws, target, forget, heldout, precision)
    sig_o = _signals(ws, original, forget, heldout, precision) if original else None
    sig_r = [_signals(ws, m, forget, heldout, precision) for m in refs]
    k = len(refs)
    attack = attacks.primary_attack_name(k)
    a = 0.3
    if attack == "rmia":
        p_refs = np.stack([s.p for s in sig_r])
        a = attacks.tune_rmia_a(sig_o.p if sig_o else None, p_refs, is_forget=is_forget)

    def scores(sig: Signals, others: list[Signals]) -> np.ndarray:
        if attack == "rmia":
            return attacks.rmia_offline(sig.p, np.stack([s.p for s in others]), a=a)
        if attack == "lira":
            return attacks.lira_offline(sig.phi, np.stack([s.phi for s in others]))
        return attacks.loss_attack_scores(sig.loss)

    def result(
        name: str, role: str, model: nn.Module, sig: Signals, others: list[Signals]
    ) -> ModelResult:
        s = scores(sig, others)
        m = None
        if attack == "population-loss" or others:
            m = metrics.attack_metrics(
                AttackScores(attack=attack, forget=s[is_forget], heldout=s[~is_forget]),
                rng=rng,
                fprs=FPRS,
                tail_fpr=request.rule.fpr,
                n_boot=request.n_boot,
            )
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
            lr_attack_accuracy=attacks.logistic_regression_mia_accuracy(
                sig.loss[is_forget], sig.loss[~is_forget], rng=rng
            ),
        )

    target_result = result("target", "target", target, sig_t, sig_r)
    original_result = result("original", "original", original, sig_o, sig_r) if sig_o else None
    ref_results = (
        tuple(
            result(
                f"reference {i + 1}",
                "reference",
                refs[i],
                sig_r[i],
                [s for j, s in enumerate(sig_r) if j != i],
            )
            for i in range(k)
        )
        if k >= 2
        else ()
    )
    controls = [r.metrics for r in ref_results if r.metrics] or None
    auc_diff = None
    target_scores = scores(sig_t, sig_r)
    if controls:
        auc_diff = metrics.auc_difference_interval(
            target_scores[is_forget],
            target_scores[~is_forget],
            reference_aucs=[c.auc.value for c in controls],
            rng=rng,
            n_boot=request.n_boot,
        )
    assert target_result.metrics is not None
    verdict = decide(
        target=target_result.metrics,
        references=controls,
        positive_control=original_result.metrics if original_result else None,
        auc_diff=auc_diff,
        rule=request.rule,
        sample=sample,
        diagnostics=diagnostics,
    )
    auc_ref = float(np.mean([c.auc.value for c in controls])) if controls else 0.5
    remaining = None
    if original_result and original_result.metrics:
        remaining = metrics.signal_remaining(
            target_result.metrics.auc.value, original_result.metrics.auc.value, auc_ref
        )
    roc = {"target": metrics.roc_curve(target_scores[is_forget], target_scores[~is_forget])}
    if sig_o is not None:
        s = scores(sig_o, sig_r)
        roc["original"] = metrics.roc_curve(s[is_forget], s[~is_forget])
    for i, r in enumerate(ref_results):
        s = scores(sig_r[i], [x for j, x in enumerate(sig_r) if j != i])
        roc[r.name] = metrics.roc_curve(s[is_forget], s[~is_forget])
    per_sample = _per_sample(ws, forget, heldout, target_scores, target_result.metrics)
    return {
        "attack": attack,
        "k": k,
        "target": target_result,
        "original": original_result,
        "references": ref_results,
        "auc_difference": auc_diff,
        "signal_remaining": remaining,
        "diagnostics": diagnostics,
        "verdict": verdict,
        "per_sample": per_sample,
        "roc": roc,
    }


def _accuracy(ws: Workspace, model: nn.Module, rows: np.ndarray, precision: Precision) -> float:
    loader = make_loader(
        source(ws.train, rows, spec=ws.spec.data, info=ws.info, encoder=ws.encoder),
        batch_size=512,
        shuffle=False,
        seed=0,
        device=precision.device,
    )
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
    """INCONCLUSIVE before any training: the sample cannot support a PASS."""
    reasons = sample.reasons or ("forget_set_too_small",)
    verdict = Verdict(
        status="INCONCLUSIVE",
        exit_code=5,
        reasons=tuple(reasons),
        evidence="none",
        min_detectable_auc=sample.min_detectable_auc_delta,
        explanation=(
            f"With |F|={sample.n_forget} and |H|={sample.n_heldout} no PASS is possible "
            f"at δ_AUC={request.rule.delta_auc}; the smallest AUC effect this audit "
            f"could detect is {sample.min_detectable_auc_delta:.3f}. No reference "
            "models were trained (pass --refs K to run the attack anyway)."
        ),
    )
    timing["total_seconds"] = time.perf_counter() - started
    return AuditReport(
        inputs=inputs,
        settings=_settings(request, "none", 0),
        sample=sample,
        attack="none",
        k=0,
        target=None,
        original=None,
        references=(),
        auc_difference=None,
        signal_remaining=None,
        diagnostics=(),
        verdict=verdict,
        timing=timing,
        notes=tuple(notes),
    )
