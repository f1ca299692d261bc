"""The audit's pre-registered decision rule (audit.md, "Verdict", revised).

Every test and margin compares the target with the references audited the same way (the
negative controls, :mod:`unforget.mia.comparison`), never with 0.5 or the nominal FPR: a
forget/held-out difference that every retrain shares can then neither block a PASS nor make a
FAIL. The family-wise level α is split evenly (Bonferroni) between the AUC test and the tail
test, α/2 each, one-sided in the direction checked. A FAIL needs a test to reject *and* the effect
to exceed a practical margin (or flagged leaking samples beyond what the references show); a PASS
needs the opposite shown by intervals (an equivalence argument). Anything else is INCONCLUSIVE,
with the effect sizes the run did rule out. Without negative controls (K < 2) the tests fall
back to exchangeability of F and H (AUC 0.5, TPR = FPR): a leak can still be found, a PASS not.

Reason codes (stable, machine-readable):
    FAIL-LEAK: ``auc_test_upper``, ``tail_test_upper`` (which test rejected) and
        ``auc_above_reference`` (AUC_U − AUC_ref ≥ δ), ``tpr_above_reference`` (TPR_U − TPR_ref ≥
        margin); or ``leaking_samples`` (more BH-flagged IDs than any reference shows).
    FAIL-OVER: ``auc_test_lower``, ``tail_test_lower`` and ``auc_below_reference``.
    INCONCLUSIVE: ``leak_below_margin``, ``over_below_margin``, ``no_references``,
        ``forget_set_too_small``, ``heldout_too_small``, ``auc_interval_too_wide``,
        ``tpr_bound_above_margin``, ``leaking_samples_flagged``, ``diagnostics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from unforget.mia.results import (
    EXIT_CODES,
    AttackMetrics,
    Evidence,
    ReferenceComparison,
    SampleSizeCheck,
    Side,
    Status,
    Verdict,
    VerdictRule,
)

REASON_TEXT: dict[str, str] = {
    "auc_test_upper": "the AUC test finds F more member-like than the references do",
    "tail_test_upper": "more forget samples lie in H's upper FPR tail than under the references",
    "auc_test_lower": "the AUC test finds F less member-like than the references do",
    "tail_test_lower": "more forget samples lie in H's lower FPR tail than under the references",
    "auc_above_reference": "AUC_U exceeds AUC_ref by at least δ",
    "tpr_above_reference": "the TPR at the operating FPR exceeds the references' by the margin",
    "auc_below_reference": "AUC_U falls below AUC_ref by at least δ",
    "leaking_samples": "more forget samples are flagged as leaking than the references explain",
    "leak_below_margin": "F is detectably more member-like than under the references, but by "
    "less than the margins",
    "over_below_margin": "F is detectably less member-like than under the references, but by "
    "less than the margin",
    "no_references": "fewer than 2 reference models, so there are no negative controls",
    "forget_set_too_small": "the forget set is too small for the margins to be shown",
    "heldout_too_small": "the held-out set is too small for the margins to be shown",
    "auc_interval_too_wide": "the interval of AUC_U − AUC_ref is not inside ±δ",
    "tpr_bound_above_margin": "the upper bound of TPR_U − TPR_ref reaches the margin",
    "leaking_samples_flagged": "forget samples are flagged as leaking that no reference flags",
    "diagnostics": "diagnostics were raised",
}


def _poisson_sf(n: int, mean: float) -> float:
    """P(X ≥ n) for X ~ Poisson(mean), summed term by term (n is a small count)."""
    if n <= 0:
        return 1.0
    term, below = math.exp(-mean), 0.0
    for i in range(n):
        below += term
        term *= mean / (i + 1)
    return max(0.0, 1.0 - below)


def _poisson_upper(total: int, models: int, *, level: float = 0.95) -> float:
    """One-sided upper confidence bound on the per-model Poisson rate of flagged samples.

    Solves P(Poisson(models·λ) ≤ total) = 1 − level by bisection (Garwood 1936); with no flags
    over K = 4 controls it is 3.0/4 = 0.75, so a target needs 5 unexplained flagged IDs before
    they alone make a FAIL-LEAK at α/2 = 0.005 (flagged IDs always block a PASS).
    """
    low, high = 0.0, 10.0 * (total + 10)
    for _ in range(200):
        mid = 0.5 * (low + high)
        if 1.0 - _poisson_sf(total + 1, mid) > 1.0 - level:
            low = mid
        else:
            high = mid
    return high / models


@dataclass(frozen=True, kw_only=True, slots=True)
class _Findings:
    """What the tests found, relative to the controls (or to exchangeability without them)."""

    upper: tuple[str, ...]  # codes of the tests rejecting in the leak direction
    lower: tuple[str, ...]  # ... in the over-forgetting direction
    auc_gap: float  # AUC_U − AUC_ref (or − 0.5)
    tpr_gap: float  # TPR_U − TPR_ref (or − FPR)
    auc_ruled_out: float  # |AUC gap| the 95% interval excludes
    tpr_ruled_out: float  # TPR excess the 95% interval excludes
    interval_inside: bool  # AUC gap interval strictly inside ±δ
    excess_leaking: int  # target-flagged IDs no control flags
    leaking_p: float  # P(that many or more | the controls' flag rate, upper bound)


def _codes(auc_p: float, tail_p: float, side: Side, level: float) -> tuple[str, ...]:
    codes = []
    if auc_p < level:
        codes.append(f"auc_test_{side}")
    if tail_p < level:
        codes.append(f"tail_test_{side}")
    return tuple(codes)


def _findings(
    target: AttackMetrics,
    comparison: ReferenceComparison | None,
    controls: Sequence[AttackMetrics],
    rule: VerdictRule,
) -> _Findings:
    level = rule.alpha / 2.0
    flagged = set(target.leaking).difference(*(set(c.leaking) for c in controls))
    rate = _poisson_upper(sum(len(c.leaking) for c in controls), max(len(controls), 1))
    leaking_p = _poisson_sf(len(flagged), rate)
    if comparison is None:
        tpr, a = target.tpr_at(rule.fpr), target.auc
        return _Findings(
            upper=_codes(target.auc_p_upper, target.tail_upper.p_value, "upper", level),
            lower=_codes(target.auc_p_lower, target.tail_lower.p_value, "lower", level),
            auc_gap=a.value - 0.5,
            tpr_gap=tpr.tpr - rule.fpr,
            auc_ruled_out=max(0.5 - a.low, a.high - 0.5),
            tpr_ruled_out=max(tpr.high - rule.fpr, 0.0),
            interval_inside=False,
            excess_leaking=len(flagged),
            leaking_p=leaking_p,
        )
    d = comparison.auc_difference
    return _Findings(
        upper=_codes(comparison.auc_p_upper, comparison.tail_p_upper, "upper", level),
        lower=_codes(comparison.auc_p_lower, comparison.tail_p_lower, "lower", level),
        auc_gap=d.value,
        tpr_gap=comparison.tpr_difference.value,
        auc_ruled_out=max(-d.low, d.high),
        tpr_ruled_out=max(comparison.tpr_difference.high, 0.0),
        interval_inside=-rule.delta_auc < d.low <= d.high < rule.delta_auc,
        excess_leaking=len(flagged),
        leaking_p=leaking_p,
    )


def _status(
    f: _Findings, *, rule: VerdictRule, sample: SampleSizeCheck, diagnostics: tuple[str, ...]
) -> tuple[Status, tuple[str, ...]]:
    """Apply the rule in order FAIL-LEAK, FAIL-OVER, PASS, INCONCLUSIVE (a leak outranks all)."""
    margins = []
    if f.auc_gap >= rule.delta_auc:
        margins.append("auc_above_reference")
    if f.tpr_gap >= rule.tpr_margin:
        margins.append("tpr_above_reference")
    beyond = ("leaking_samples",) if f.leaking_p < rule.alpha / 2.0 else ()
    if f.upper and margins:
        return "FAIL-LEAK", (*f.upper, *margins, *beyond)
    if beyond:
        return "FAIL-LEAK", beyond
    if f.lower and -f.auc_gap >= rule.delta_auc:
        return "FAIL-OVER", (*f.lower, "auc_below_reference")
    blockers = []
    if f.upper:
        blockers.append("leak_below_margin")
    if f.lower:
        blockers.append("over_below_margin")
    blockers.extend(sample.reasons)
    if sample.k >= 2 and not f.interval_inside:
        blockers.append("auc_interval_too_wide")
    if sample.k >= 2 and f.tpr_ruled_out >= rule.tpr_margin:
        blockers.append("tpr_bound_above_margin")
    if f.excess_leaking:
        blockers.append("leaking_samples_flagged")
    if diagnostics:
        blockers.append("diagnostics")
    return ("INCONCLUSIVE", tuple(blockers)) if blockers else ("PASS", ())


def _check_inputs(
    target: AttackMetrics,
    comparison: ReferenceComparison | None,
    rule: VerdictRule,
    sample: SampleSizeCheck,
) -> None:
    problems = []
    for tail in (target.tail_upper, target.tail_lower):
        if not math.isclose(tail.fpr, rule.fpr, rel_tol=1e-9):
            problems.append(f"{tail.side} tail test at FPR {tail.fpr:g}, rule says {rule.fpr:g}")
    if (sample.n_forget, sample.n_heldout) != (target.n_forget, target.n_heldout):
        problems.append("sample-size check was made for other sample sizes than the target's")
    if comparison is not None and not math.isclose(comparison.fpr, rule.fpr, rel_tol=1e-9):
        problems.append(f"comparison at FPR {comparison.fpr:g}, rule says {rule.fpr:g}")
    if (comparison is not None) != (sample.k >= 2):
        problems.append(
            f"negative controls {'given' if comparison else 'missing'} with K={sample.k}"
        )
    if problems:
        raise ValueError("inconsistent audit inputs: " + "; ".join(problems))


def _evidence(positive_control: ReferenceComparison | None, rule: VerdictRule) -> Evidence:
    if positive_control is None:
        return "weak"
    level = rule.alpha / 2.0
    detected = positive_control.auc_p_upper < level or positive_control.tail_p_upper < level
    return "strong" if detected else "weak"


def _explain(
    *,
    status: Status,
    reasons: tuple[str, ...],
    evidence: Evidence,
    target: AttackMetrics,
    comparison: ReferenceComparison | None,
    findings: _Findings,
    rule: VerdictRule,
    sample: SampleSizeCheck,
    diagnostics: tuple[str, ...],
) -> str:
    """Plain-language account of the verdict, ending with what a PASS does and does not mean."""
    if comparison is None:
        tpr = target.tpr_at(rule.fpr)
        head = (
            f"AUC {target.auc.value:.3f} [{target.auc.low:.3f}, {target.auc.high:.3f}] against "
            f"0.5 (no negative controls); TPR {tpr.tpr:.2%} (95% upper bound {tpr.high:.2%}) "
            f"at {rule.fpr:.2%} FPR."
        )
    else:
        d, t = comparison.auc_difference, comparison.tpr_difference
        head = (
            f"AUC_U − AUC_ref {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] (AUC_ref "
            f"{comparison.auc_reference:.3f} from K={comparison.k} negative controls); TPR excess "
            f"at {rule.fpr:.2%} FPR {t.value:+.2%} [{t.low:+.2%}, {t.high:+.2%}] over the "
            f"references' {comparison.tpr_reference:.2%}."
        )
    lines = [f"{status} under the {target.attack} attack: {head}"]
    if reasons:
        prefix = "Not a PASS because " if status == "INCONCLUSIVE" else "Because "
        lines.append(prefix + "; ".join(REASON_TEXT[r] for r in reasons) + ".")
    if diagnostics:
        lines.append("Diagnostics: " + "; ".join(diagnostics) + ".")
    if status == "INCONCLUSIVE":
        lines.append(
            f"No leak beyond the margins was found; this run rules out |AUC_U − AUC_ref| ≥ "
            f"{findings.auc_ruled_out:.3f} and a TPR excess ≥ {findings.tpr_ruled_out:.1%} "
            f"(a PASS needs < {rule.delta_auc:g} and < {rule.tpr_margin:.0%})."
        )
    if sample.advice:
        lines.append(sample.advice[0].upper() + sample.advice[1:] + ".")
    if evidence == "strong":
        lines.append("The attack detects F in the original model, so it could have seen a leak.")
    elif evidence == "weak":
        lines.append(
            "Weak evidence: the attack did not detect F in the original model (or none was "
            "given), so it may lack the power to see a leak at all."
        )
    lines.append(
        f"A PASS is evidence against the {target.attack} attack at {rule.fpr:.2%} FPR "
        f"(margins ±{rule.delta_auc:g} AUC, {rule.tpr_margin:.0%} TPR over the references), "
        "not proof of erasure."
    )
    return " ".join(lines)


def decide(
    *,
    target: AttackMetrics,
    comparison: ReferenceComparison | None,
    controls: Sequence[AttackMetrics] = (),
    positive_control: ReferenceComparison | None = None,
    rule: VerdictRule,
    sample: SampleSizeCheck,
    diagnostics: tuple[str, ...] = (),
) -> Verdict:
    """Apply the pre-registered rule (audit.md, "Verdict", revised: relative to the references).

    Args:
        target: metrics of the audited model θ_U (its BH-flagged IDs and, without negative
            controls, its tests against exchangeability), at ``rule.fpr``.
        comparison: θ_U against the negative controls from
            :func:`unforget.mia.comparison.compare_with_references`; None when K < 2.
        controls: each reference's own metrics audited against the other K−1 (their flagged
            IDs say which samples look "leaking" under a retrain too).
        positive_control: the original model θ_O compared with the same controls, or None; it
            only qualifies a PASS as strong or weak evidence.
        rule: margins and level.
        sample: :func:`unforget.mia.power.sample_size_check` for these |F|, |H| and K.
        diagnostics: problems found upstream (e.g. recipe mismatch); any blocks a PASS.

    Returns:
        :class:`Verdict` with status, exit code, reason codes, effects ruled out, explanation.

    Raises:
        ValueError: if the inputs were computed at another FPR, sample sizes or K than stated.
    """
    _check_inputs(target, comparison, rule, sample)
    findings = _findings(target, comparison, controls, rule)
    status, reasons = _status(findings, rule=rule, sample=sample, diagnostics=diagnostics)
    evidence: Evidence = _evidence(positive_control, rule) if status == "PASS" else "none"
    explanation = _explain(
        status=status,
        reasons=reasons,
        evidence=evidence,
        target=target,
        comparison=comparison,
        findings=findings,
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
        auc_ruled_out=findings.auc_ruled_out,
        tpr_ruled_out=findings.tpr_ruled_out,
    )
