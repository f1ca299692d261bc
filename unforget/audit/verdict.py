"""The audit's pre-registered decision rule (audit.md, "Verdict") and its sample-size pre-check.

The family-wise level α is split evenly (Bonferroni) between the two kinds of test, α/2 for the
AUC test and α/2 for the tail test; each is one-sided in the direction it checks. A FAIL needs a
test to reject *and* the effect to exceed a practical margin; a PASS needs the opposite, shown by
intervals (an equivalence argument), and it needs the retrain references as the baseline. Anything
in between is INCONCLUSIVE with reason codes, never a silent PASS.

Reason codes (stable, machine-readable):
    FAIL-LEAK: ``auc_test_upper``, ``tail_test_upper`` (which test rejected) and
        ``auc_above_reference`` (AUC_U − AUC_ref ≥ δ), ``tpr_above_margin`` (TPR ≥ margin).
    FAIL-OVER: ``auc_test_lower``, ``tail_test_lower`` and ``auc_below_reference``.
    INCONCLUSIVE: ``leak_below_margin``, ``over_below_margin``, ``no_references``,
        ``forget_set_too_small``, ``heldout_too_small``, ``no_auc_interval``,
        ``auc_interval_too_wide``, ``tpr_bound_above_margin``, ``diagnostics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from unforget.audit.exact import clopper_pearson, normal_quantile
from unforget.audit.metrics import RESOLVABLE_TAIL, min_detectable_auc_delta
from unforget.audit.results import (
    EXIT_CODES,
    AttackMetrics,
    Estimate,
    Evidence,
    SampleSizeCheck,
    Side,
    Status,
    Verdict,
    VerdictRule,
)

REASON_TEXT: dict[str, str] = {
    "auc_test_upper": "the AUC test finds F more member-like than H",
    "tail_test_upper": "more forget samples than expected lie in H's upper FPR tail",
    "auc_test_lower": "the AUC test finds F less member-like than H",
    "tail_test_lower": "more forget samples than expected lie in H's lower FPR tail",
    "auc_above_reference": "AUC_U exceeds the baseline by at least δ",
    "tpr_above_margin": "the TPR at the operating FPR reaches the margin",
    "auc_below_reference": "AUC_U falls below the baseline by at least δ",
    "leak_below_margin": "F is detectably more member-like than H, but by less than the margins",
    "over_below_margin": "F is detectably less member-like than H, but by less than the margin",
    "no_references": "no reference models were used, so there is no retrain baseline",
    "forget_set_too_small": "the forget set is too small for the margins to be shown",
    "heldout_too_small": "the held-out set is too small for the margins to be shown",
    "no_auc_interval": "no interval for AUC_U − AUC_ref was computed",
    "auc_interval_too_wide": "the interval of AUC_U − AUC_ref is not inside ±δ",
    "tpr_bound_above_margin": "the upper bound on TPR at the operating FPR reaches the margin",
    "diagnostics": "diagnostics were raised",
}


def sample_size_check(n_forget: int, n_heldout: int, rule: VerdictRule) -> SampleSizeCheck:
    """Can a PASS be reached at all with |F| and |H|? Run before training any reference.

    A PASS needs (a) the AUC interval inside ±δ: even at AUC = 0.5 its null 95% half-width
    1.96·√((n_F+n_H+1)/(12·n_F·n_H)) (Mann-Whitney variance) must be below δ; (b) the
    Clopper-Pearson upper bound on TPR below the margin when F is detected at exactly the
    FPR, the best a retrained model can be expected to do; (c) at least 10 held-out samples in
    the FPR tail. Calibration at the defaults: |F| = 100 fails (b) (bound 5.4% ≥ 3%), |F| = 1,000
    with |H| = 10,000 passes (bound 1.8%, half-width 0.018). A failure is blamed on F when it
    persists with unlimited H, on H when it persists with unlimited F, else on the smaller set.

    Returns:
        :class:`SampleSizeCheck` with ``reasons`` empty exactly when ``pass_reachable``.
    """
    if n_forget < 1 or n_heldout < 1:
        raise ValueError(f"sample sizes must be positive, got {n_forget} and {n_heldout}")
    z = normal_quantile(0.975)
    half_width = z * math.sqrt((n_forget + n_heldout + 1) / (12.0 * n_forget * n_heldout))
    expected = math.floor(rule.fpr * n_forget + 0.5)
    _, tpr_upper = clopper_pearson(expected, n_forget)
    forget_short = tpr_upper >= rule.tpr_margin or z / math.sqrt(12.0 * n_forget) >= rule.delta_auc
    heldout_short = (
        n_heldout * rule.fpr < RESOLVABLE_TAIL - 1e-9
        or z / math.sqrt(12.0 * n_heldout) >= rule.delta_auc
    )
    if half_width >= rule.delta_auc and not (forget_short or heldout_short):
        forget_short, heldout_short = n_forget <= n_heldout, n_forget > n_heldout
    reasons = []
    if forget_short:
        reasons.append("forget_set_too_small")
    if heldout_short:
        reasons.append("heldout_too_small")
    return SampleSizeCheck(
        n_forget=n_forget,
        n_heldout=n_heldout,
        min_detectable_auc_delta=min_detectable_auc_delta(n_forget, n_heldout, alpha=rule.alpha),
        auc_half_width=half_width,
        tpr_upper_bound=tpr_upper,
        pass_reachable=not reasons,
        reasons=tuple(reasons),
    )


def _rejections(metrics: AttackMetrics, side: Side, *, level: float) -> tuple[str, ...]:
    """Codes of the tests that reject in direction ``side``, each at one-sided level α/2."""
    auc_p = metrics.auc_p_upper if side == "upper" else metrics.auc_p_lower
    tail = metrics.tail_upper if side == "upper" else metrics.tail_lower
    codes = []
    if auc_p < level:
        codes.append(f"auc_test_{side}")
    if tail.p_value < level:
        codes.append(f"tail_test_{side}")
    return tuple(codes)


def _check_inputs(target: AttackMetrics, rule: VerdictRule, sample: SampleSizeCheck) -> None:
    problems = []
    for tail in (target.tail_upper, target.tail_lower):
        if not math.isclose(tail.fpr, rule.fpr, rel_tol=1e-9):
            problems.append(f"{tail.side} tail test at FPR {tail.fpr:g}, rule says {rule.fpr:g}")
    if (sample.n_forget, sample.n_heldout) != (target.n_forget, target.n_heldout):
        problems.append("sample-size check was made for other sample sizes than the target's")
    if problems:
        raise ValueError("inconsistent audit inputs: " + "; ".join(problems))


def _interval_blockers(auc_diff: Estimate | None, rule: VerdictRule) -> tuple[str, ...]:
    """A PASS needs the whole interval of AUC_U − AUC_ref strictly inside (−δ, δ)."""
    if auc_diff is None:
        return ("no_auc_interval",)
    inside = -rule.delta_auc < auc_diff.low <= auc_diff.high < rule.delta_auc
    return () if inside else ("auc_interval_too_wide",)


def _pass_blockers(
    *,
    target: AttackMetrics,
    references: Sequence[AttackMetrics] | None,
    auc_diff: Estimate | None,
    rule: VerdictRule,
    sample: SampleSizeCheck,
    diagnostics: tuple[str, ...],
) -> tuple[str, ...]:
    """Reason codes that keep a non-FAIL result from being a PASS, in a fixed order."""
    level = rule.alpha / 2.0
    reasons = []
    if _rejections(target, "upper", level=level):
        reasons.append("leak_below_margin")
    if _rejections(target, "lower", level=level):
        reasons.append("over_below_margin")
    if not references:
        reasons.append("no_references")
    reasons.extend(sample.reasons)
    if references:
        reasons.extend(_interval_blockers(auc_diff, rule))
    if target.tpr_at(rule.fpr).high >= rule.tpr_margin:
        reasons.append("tpr_bound_above_margin")
    if diagnostics:
        reasons.append("diagnostics")
    return tuple(reasons)


def _status(
    target: AttackMetrics, *, auc_ref: float, rule: VerdictRule, blockers: tuple[str, ...]
) -> tuple[Status, tuple[str, ...]]:
    """Apply the rule in order FAIL-LEAK, FAIL-OVER, PASS, INCONCLUSIVE (a leak outranks all)."""
    level, gap = rule.alpha / 2.0, target.auc.value - auc_ref
    upper, lower = (
        _rejections(target, "upper", level=level),
        _rejections(target, "lower", level=level),
    )
    leak_margins = []
    if gap >= rule.delta_auc:
        leak_margins.append("auc_above_reference")
    if target.tpr_at(rule.fpr).tpr >= rule.tpr_margin:
        leak_margins.append("tpr_above_margin")
    if upper and leak_margins:
        return "FAIL-LEAK", (*upper, *leak_margins)
    if lower and -gap >= rule.delta_auc:
        return "FAIL-OVER", (*lower, "auc_below_reference")
    return ("INCONCLUSIVE", blockers) if blockers else ("PASS", ())


def _evidence(positive_control: AttackMetrics | None, rule: VerdictRule) -> Evidence:
    if positive_control is None:
        return "weak"
    detected = _rejections(positive_control, "upper", level=rule.alpha / 2.0)
    return "strong" if detected else "weak"


def _explain(
    *,
    status: Status,
    reasons: tuple[str, ...],
    evidence: Evidence,
    target: AttackMetrics,
    auc_ref: float | None,
    rule: VerdictRule,
    sample: SampleSizeCheck,
    diagnostics: tuple[str, ...],
) -> str:
    """Plain-language account of the verdict, ending with what a PASS does and does not mean."""
    tpr = target.tpr_at(rule.fpr)
    baseline = "0.5 (no references)" if auc_ref is None else f"{auc_ref:.3f} (retrain references)"
    lines = [
        f"{status} under the {target.attack} attack: AUC {target.auc.value:.3f} "
        f"[{target.auc.low:.3f}, {target.auc.high:.3f}] against a baseline of {baseline}; "
        f"TPR {tpr.tpr:.2%} (95% upper bound {tpr.high:.2%}) at {rule.fpr:.2%} FPR."
    ]
    if reasons:
        prefix = "Not a PASS because " if status == "INCONCLUSIVE" else "Because "
        lines.append(prefix + "; ".join(REASON_TEXT[r] for r in reasons) + ".")
    if diagnostics:
        lines.append("Diagnostics: " + "; ".join(diagnostics) + ".")
    lines.append(
        f"With |F| = {sample.n_forget} and |H| = {sample.n_heldout} the AUC test detects "
        f"|AUC − 0.5| ≥ {sample.min_detectable_auc_delta:.3f} with 80% power."
    )
    if evidence == "strong":
        lines.append("The attack detects F in the original model, so it could have seen a leak.")
    elif evidence == "weak":
        lines.append(
            "Weak evidence: the attack did not detect F in the original model (or none was "
            "given), so it may lack the power to see a leak at all."
        )
    lines.append(
        f"A PASS is evidence against the {target.attack} attack at {rule.fpr:.2%} FPR "
        f"(margins ±{rule.delta_auc:g} AUC, {rule.tpr_margin:.0%} TPR), not proof of erasure."
    )
    return " ".join(lines)


def decide(
    *,
    target: AttackMetrics,
    references: Sequence[AttackMetrics] | None,
    positive_control: AttackMetrics | None,
    auc_diff: Estimate | None,
    rule: VerdictRule,
    sample: SampleSizeCheck,
    diagnostics: tuple[str, ...] = (),
) -> Verdict:
    """Apply the pre-registered rule to the audited model's metrics (audit.md, "Verdict").

    Args:
        target: metrics of the audited model θ_U, with a TPR entry and tail tests at ``rule.fpr``.
        references: metrics of each reference model audited against the other K−1 (negative
            controls); AUC_ref is the mean of their AUCs, 0.5 when None or empty.
        positive_control: metrics of the original model θ_O, or None; only qualifies a PASS.
        auc_diff: interval of AUC_U − AUC_ref from
            :func:`unforget.audit.metrics.auc_difference_interval`; needed for a PASS.
        rule: margins and level. sample: :func:`sample_size_check` for the target's sizes.
        diagnostics: problems found upstream (e.g. recipe mismatch); any blocks a PASS.

    Returns:
        :class:`Verdict` with status, exit code, reason codes and explanation.

    Raises:
        ValueError: if the metrics were computed at another FPR or sample sizes than the rule
            and sample check state.
    """
    _check_inputs(target, rule, sample)
    auc_ref = sum(r.auc.value for r in references) / len(references) if references else None
    blockers = _pass_blockers(
        target=target,
        references=references,
        auc_diff=auc_diff,
        rule=rule,
        sample=sample,
        diagnostics=diagnostics,
    )
    status, reasons = _status(
        target, auc_ref=0.5 if auc_ref is None else auc_ref, rule=rule, blockers=blockers
    )
    evidence: Evidence = _evidence(positive_control, rule) if status == "PASS" else "none"
    explanation = _explain(
        status=status,
        reasons=reasons,
        evidence=evidence,
        target=target,
        auc_ref=auc_ref,
        rule=rule,
        sample=sample,
        diagnostics=diagnostics,
    )
    return Verdict(
        status=status,
        exit_code=EXIT_CODES[status],
        reasons=reasons,
        evidence=evidence,
        min_detectable_auc=sample.min_detectable_auc_delta,
        explanation=explanation,
    )
