"""The sample-size pre-check: can a PASS be reached with |F|, |H| and K? (audit.md, "Verdict").

Run before any reference is trained, from the sizes alone. It predicts the standard errors of the
paired differences the verdict reads (AUC_U − AUC_ref and TPR_U − TPR_ref, see
:mod:`unforget.mia.comparison`) for an exact retrain, and says in one line what would make a
PASS reachable when it is not: more forget IDs, more held-out rows or more references. It never
stops the audit: a small request is still attacked, and a leak is still FAIL-LEAK.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from unforget.mia.exact import normal_sf
from unforget.mia.metrics import RESOLVABLE_TAIL, min_detectable_auc_delta
from unforget.mia.results import SampleSizeCheck, VerdictRule

_Z95 = 1.959963984540054  # two-sided 95% intervals, as everywhere in the audit
_MAX_SIZE = 10_000_000


def _predicted_sd(n_f: float, n_h: float, k: int, fpr: float) -> tuple[float, float]:
    """Predicted standard errors of AUC_U − AUC_ref and TPR_U − TPR_ref for an exact retrain.

    Each model's AUC has the Mann-Whitney null variance (n_F+n_H+1)/(12·n_F·n_H) (Hanley &
    McNeil 1982) and its tail share the binomial fpr(1−fpr)/n_F plus the threshold's own noise
    fpr(1−fpr)/n_H; the mean of K controls adds 1/K of that. Target and controls share F and H,
    so the true difference is less noisy: the prediction errs towards calling a PASS unreachable.
    """
    inflate = 1.0 + 1.0 / max(k, 1)
    auc_var = (n_f + n_h + 1.0) / (12.0 * n_f * n_h)
    tpr_var = fpr * (1.0 - fpr) * (1.0 / n_f + 1.0 / n_h)
    return math.sqrt(inflate * auc_var), math.sqrt(inflate * tpr_var)


def _fits(n_f: float, n_h: float, k: int, rule: VerdictRule) -> bool:
    auc_sd, tpr_sd = _predicted_sd(n_f, n_h, k, rule.fpr)
    return (
        k >= 2
        and _Z95 * auc_sd < rule.delta_auc
        and _Z95 * tpr_sd < rule.tpr_margin
        and n_h * rule.fpr >= RESOLVABLE_TAIL - 1e-9
    )


def _smallest(fits: Callable[[int], bool], low: int) -> int | None:
    """Smallest integer n ≥ low with fits(n), by doubling then bisection; None past the cap."""
    if fits(low):
        return low
    high = low
    while not fits(high):
        high *= 2
        if high > _MAX_SIZE:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def _advice(n_f: int, n_h: int, k: int, rule: VerdictRule) -> str:
    """One line: the smallest |F|, |H| or K that alone would make a PASS reachable."""
    more_k = next((j for j in range(max(k, 2), 65) if _fits(n_f, n_h, j, rule)), None)
    if k < 2:
        controls = f"a PASS needs negative controls: run with K ≥ {more_k or 2} references"
        if more_k is not None:
            return controls
        return controls + "; with K = 4, " + _advice(n_f, n_h, 4, rule)
    options = []
    more_f = _smallest(lambda n: _fits(n, n_h, k, rule), n_f)
    if more_f is not None:
        options.append(f"|F| ≥ {more_f:,} forget IDs")
    more_h = _smallest(lambda n: _fits(n_f, n, k, rule), n_h)
    if more_h is not None:
        options.append(f"|H| ≥ {more_h:,} held-out rows")
    if more_k is not None:
        options.append(f"K ≥ {more_k} references")
    if not options:
        return "a PASS needs more forget IDs, held-out rows and references together"
    return "a PASS becomes reachable with " + ", or ".join(options)


def sample_size_check(
    n_forget: int, n_heldout: int, *, k: int, rule: VerdictRule
) -> SampleSizeCheck:
    """Can a PASS be reached with |F|, |H| and K? Predicted before any model is scored.

    A PASS needs the interval of AUC_U − AUC_ref inside ±δ, the upper bound of TPR_U − TPR_ref
    below the margin, |H|·FPR ≥ 10 and K ≥ 2 (negative controls). With the predicted standard
    error s of the AUC difference (:func:`_predicted_sd`), an exact retrain's interval fits when
    |Δ| < δ − 1.96·s, which happens with probability 2Φ(δ/s − 1.96) − 1 (``retrain_pass_rate``).
    Worked value: |F| = 1,200, |H| = 3,000, K = 4 gives s = 0.0110, half-width 0.0216 and a
    predicted rate of 54%; the calibration script measures the real rate, which is higher because
    target and controls share F and H.

    Raises:
        ValueError: if a size is not positive or K is negative.
    """
    if n_forget < 1 or n_heldout < 1 or k < 0:
        raise ValueError(f"need positive sizes and K >= 0, got {n_forget}, {n_heldout}, K={k}")
    auc_sd, tpr_sd = _predicted_sd(n_forget, n_heldout, k, rule.fpr)
    reasons = []
    if k < 2:
        reasons.append("no_references")
    big = float(_MAX_SIZE)
    if not _fits(n_forget, big, max(k, 2), rule):
        reasons.append("forget_set_too_small")
    if not _fits(big, n_heldout, max(k, 2), rule):
        reasons.append("heldout_too_small")
    size_ok = not {"forget_set_too_small", "heldout_too_small"} & set(reasons)
    if size_ok and not _fits(n_forget, n_heldout, max(k, 2), rule):
        # Each set would do with the other unlimited: blame the smaller one.
        reasons.append("forget_set_too_small" if n_forget <= n_heldout else "heldout_too_small")
    detectable = min_detectable_auc_delta(n_forget, n_heldout, alpha=rule.alpha)
    if k >= 2:
        detectable *= math.sqrt(1.0 + 1.0 / k)
    margin_in_sd = rule.delta_auc / auc_sd - _Z95
    rate = max(0.0, 1.0 - 2.0 * normal_sf(margin_in_sd)) if k >= 2 else 0.0
    return SampleSizeCheck(
        n_forget=n_forget,
        n_heldout=n_heldout,
        k=k,
        min_detectable_auc_delta=detectable,
        auc_half_width=_Z95 * auc_sd,
        tpr_upper_bound=_Z95 * tpr_sd,
        retrain_pass_rate=rate,
        pass_reachable=not reasons,
        reasons=tuple(reasons),
        advice="" if not reasons else _advice(n_forget, n_heldout, k, rule),
    )
