"""Metrics of forget-vs-held-out membership scores, with intervals and exact tests (numpy only).

Every function takes scores oriented by the convention on :class:`~unforget.mia.results.
AttackScores` (higher = more member-like): ``pos`` are the forget scores F, ``neg`` the held-out
scores H. Randomness only enters through an explicit ``np.random.Generator``, so the same seed
gives byte-identical results. Exact distribution tails live in :mod:`unforget.mia.exact`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from unforget.mia.exact import beta_binom_sf, clopper_pearson, normal_quantile, normal_sf
from unforget.mia.results import (
    AttackMetrics,
    AttackScores,
    Estimate,
    Side,
    TailTest,
    TprAtFpr,
    as_score_array,
)

FloatArray = npt.NDArray[np.float64]

RESOLVABLE_TAIL = 10  # held-out samples that must lie beyond a threshold to read TPR there
_BOOT_CELLS = 1 << 22  # resample weights held in memory at once (~32 MiB of float64)


def _midranks(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """1-based ranks with ties given the mean rank of their run, and the size of each run."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_run = np.ones(len(values), dtype=bool)
    new_run[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new_run) - 1]
    return ranks, (ends - starts).astype(np.float64)


def _u_statistic(pos: FloatArray, neg: FloatArray) -> tuple[float, FloatArray]:
    """Mann-Whitney U of ``pos`` over ``neg`` (ties count ½) and the pooled tie-run sizes."""
    ranks, ties = _midranks(np.concatenate([pos, neg]))
    n1 = len(pos)
    return float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0), ties


def auc(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike) -> float:
    """Area under the ROC curve, P(member > non-member) + ½ P(tie), in O(n log n).

    Computed as U / (n1·n2) with U the Mann-Whitney statistic from midranks (Mann & Whitney,
    Ann. Math. Stat. 1947); Hanley & McNeil (Radiology 1982) show this equals the ROC area.

    Args:
        member_scores: scores of the positives (forget set), shape ``(n1,)``.
        nonmember_scores: scores of the negatives (held-out set), shape ``(n2,)``.

    Returns:
        AUC in [0, 1]; 0.5 when the two groups are indistinguishable.
    """
    pos = as_score_array(member_scores, name="member scores")
    neg = as_score_array(nonmember_scores, name="non-member scores")
    u, _ = _u_statistic(pos, neg)
    return u / (len(pos) * len(neg))


def weighted_aucs(
    below: npt.NDArray[np.intp],
    upto: npt.NDArray[np.intp],
    pos_counts: npt.NDArray[np.int64],
    neg_counts: npt.NDArray[np.int64],
) -> FloatArray:
    """AUC of each resample given as multiplicities, without re-sorting anything.

    With H sorted once, a resample is a row c of multiplicities over F and a row d over sorted H;
    AUC* = Σ_i c_i·[D(< x_i) + ½·D(= x_i)] / (n1·n2), where D(< x) and D(≤ x) are the cumulative
    sums of d at the precomputed positions ``below`` and ``upto`` (searchsorted left / right).

    Args:
        below, upto: for each F score, the count of H scores strictly below / at or below it.
        pos_counts: shape ``(B, n1)``, multiplicities of F. neg_counts: shape ``(B, n2)``.

    Returns:
        Shape ``(B,)``: the AUC of each resample.
    """
    b, n2 = neg_counts.shape
    cum = np.zeros((b, n2 + 1), dtype=np.int32)  # int32 cumsum: several times faster than float
    np.cumsum(neg_counts, axis=1, out=cum[:, 1:], dtype=np.int32)
    wins = cum[:, below] + cum[:, upto]  # twice the wins, exact in integers
    n1 = pos_counts.shape[1]
    total = np.einsum("bi,bi->b", pos_counts, wins, dtype=np.float64)
    return np.asarray(total / (2.0 * n1 * n2), dtype=np.float64)


def _bootstrap_aucs(
    pos: FloatArray, neg: FloatArray, *, rng: np.random.Generator, n_boot: int
) -> FloatArray:
    """AUCs of ``n_boot`` stratified resamples (each group resampled separately, with replacement).

    Resamples are drawn in chunks of rows bounded by memory, as multiplicity vectors (bincount of
    uniform indices), and scored by :func:`weighted_aucs` in O(n1 + n2) each.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    n1, n2 = len(pos), len(neg)
    ordered = np.sort(neg)
    below = np.searchsorted(ordered, pos, side="left")
    upto = np.searchsorted(ordered, pos, side="right")
    rows = max(1, min(n_boot, _BOOT_CELLS // (n1 + n2 + 1)))
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        offsets = np.arange(b)[:, None]
        d = np.bincount((rng.integers(0, n2, (b, n2)) + offsets * n2).ravel(), minlength=b * n2)
        c = np.bincount((rng.integers(0, n1, (b, n1)) + offsets * n1).ravel(), minlength=b * n1)
        out[start : start + b] = weighted_aucs(below, upto, c.reshape(b, n1), d.reshape(b, n2))
    return out


def _percentiles(draws: FloatArray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    low, high = np.quantile(draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def auc_interval(
    pos: npt.ArrayLike,
    neg: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> Estimate:
    """AUC with a stratified-bootstrap percentile interval (Efron & Tibshirani 1993, ch. 13).

    Stratified (F and H resampled separately) because the group sizes are fixed by design, not
    random. Deterministic given ``rng``'s state.

    Args:
        pos: forget scores, shape ``(n_F,)``. neg: held-out scores, shape ``(n_H,)``.
        rng: source of the resampling. n_boot: number of resamples. level: interval coverage.

    Returns:
        Estimate with the point AUC and the percentile interval of the bootstrap AUCs.
    """
    pos = as_score_array(pos, name="forget scores")
    neg = as_score_array(neg, name="held-out scores")
    low, high = _percentiles(_bootstrap_aucs(pos, neg, rng=rng, n_boot=n_boot), level)
    return Estimate(value=auc(pos, neg), low=low, high=high)


def auc_test(pos: npt.ArrayLike, neg: npt.ArrayLike) -> tuple[float, float]:
    """One-sided p-values of AUC > 0.5 and AUC < 0.5 (Mann-Whitney, normal approximation).

    H0: F and H scores are exchangeable. Under H0, U has mean n1·n2/2 and, with tie runs of size
    t, variance n1·n2/12 · [(N+1) − Σ(t³−t)/(N(N−1))] (the tie-corrected variance, Lehmann,
    "Nonparametrics", 1975, ch. 1); a continuity correction of ½ is applied to each side, as in
    scipy's asymptotic ``mannwhitneyu``. Both p-values equal 1 when all scores tie.

    Returns:
        ``(p_upper, p_lower)``: evidence that F is more / less member-like than H.
    """
    pos = as_score_array(pos, name="forget scores")
    neg = as_score_array(neg, name="held-out scores")
    u, ties = _u_statistic(pos, neg)
    n1, n2 = len(pos), len(neg)
    n = n1 + n2
    tie_term = float(np.sum(ties**3 - ties)) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if variance <= 0.0:
        return 1.0, 1.0
    sd, mean = math.sqrt(variance), n1 * n2 / 2.0
    return normal_sf((u - mean - 0.5) / sd), normal_sf((mean - u - 0.5) / sd)


def _tail_threshold(neg: FloatArray, *, fpr: float, side: Side) -> tuple[float, int]:
    """Threshold beyond which at most ``fpr`` of H lie (strictly), and that allowance k.

    k = ⌊fpr·n_H⌋; the threshold is the (k+1)-th largest H score (upper) or smallest (lower).
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    if side not in ("upper", "lower"):
        raise ValueError(f"side must be 'upper' or 'lower', got {side!r}")
    allowed = min(math.floor(fpr * len(neg) + 1e-9), len(neg) - 1)
    ordered = np.sort(neg)
    return float(ordered[-1 - allowed] if side == "upper" else ordered[allowed]), allowed


def tpr_at_fpr(
    pos: npt.ArrayLike, neg: npt.ArrayLike, *, fpr: float, level: float = 0.95
) -> TprAtFpr:
    """TPR at a held-out-calibrated FPR, with a Clopper-Pearson interval.

    Carlini et al. (S&P 2022) argue that an attack's risk is its TPR at low FPR, not its AUC;
    the interval is exact (Clopper & Pearson, Biometrika 1934).

    The threshold is the (k+1)-th largest held-out score, k = ⌊fpr·n_H⌋, so at most ``fpr`` of H
    score strictly above it; TPR is the share of F strictly above it. Ties therefore never inflate
    either rate. The interval covers only F's sampling noise, not the threshold's.

    Returns:
        :class:`TprAtFpr`; ``resolvable`` requires n_H·fpr ≥ 10.
    """
    pos = as_score_array(pos, name="forget scores")
    neg = as_score_array(neg, name="held-out scores")
    threshold, _ = _tail_threshold(neg, fpr=fpr, side="upper")
    detections = int(np.sum(pos > threshold))
    low, high = clopper_pearson(detections, len(pos), level=level)
    return TprAtFpr(
        fpr=fpr,
        tpr=detections / len(pos),
        low=low,
        high=high,
        threshold=threshold,
        resolvable=len(neg) * fpr >= RESOLVABLE_TAIL - 1e-9,
        detections=detections,
        n_forget=len(pos),
    )


def tail_test(pos: npt.ArrayLike, neg: npt.ArrayLike, *, fpr: float, side: Side) -> TailTest:
    """Exact conformal test for an excess of forget samples beyond H's ``fpr`` tail.

    With k = ⌊fpr·n_H⌋ and the threshold at the (k+1)-th most extreme H score, the count X of F
    beyond it is, under exchangeability of F ∪ H, the number of F ranked before the (k+1)-th H in
    a uniformly random order: negative hypergeometric, i.e. BetaBinomial(n_F, k+1, n_H−k), with
    mean n_F·(k+1)/(n_H+1) ≈ n_F·fpr. Using this instead of Binomial(n_F, fpr) accounts for the
    threshold's own estimation noise exactly, so the test holds its level for any n_H. Ties
    (strict inequality) can only lower X, making the test conservative.

    Args:
        pos, neg: forget and held-out scores. fpr: tail share of H.
        side: "upper" tests for leakage (F above H's top tail), "lower" for over-forgetting.

    Returns:
        :class:`TailTest` with p = P(X ≥ observed) under H0.
    """
    pos = as_score_array(pos, name="forget scores")
    neg = as_score_array(neg, name="held-out scores")
    threshold, allowed = _tail_threshold(neg, fpr=fpr, side=side)
    beyond = pos > threshold if side == "upper" else pos < threshold
    observed, n_f, n_h = int(np.sum(beyond)), len(pos), len(neg)
    return TailTest(
        side=side,
        fpr=fpr,
        threshold=threshold,
        observed=observed,
        expected=n_f * (allowed + 1) / (n_h + 1),
        p_value=beta_binom_sf(observed - 1, n_f, a=allowed + 1, b=n_h - allowed),
        n_forget=n_f,
    )


def conformal_pvalues(pos: npt.ArrayLike, neg: npt.ArrayLike) -> FloatArray:
    """Per-forget-sample conformal p-values p_f = (1 + #{h: s_h ≥ s_f}) / (1 + n_H).

    Valid under exchangeability, P(p_f ≤ u) ≤ u (Vovk et al., "Algorithmic Learning in a Random
    World", 2005; Bates et al., "Testing for outliers with conformal p-values", Ann. Stat. 2023).
    Small p = the sample scores above nearly all held-out samples (it looks like a member).

    Returns:
        Array of shape ``(n_F,)`` with values in (0, 1].
    """
    pos = as_score_array(pos, name="forget scores")
    ordered = np.sort(as_score_array(neg, name="held-out scores"))
    at_least = len(ordered) - np.searchsorted(ordered, pos, side="left")
    return np.asarray((1.0 + at_least) / (1.0 + len(ordered)), dtype=np.float64)


def benjamini_hochberg(pvalues: npt.ArrayLike, *, q: float = 0.05) -> npt.NDArray[np.bool_]:
    """Benjamini-Hochberg step-up rejections at false discovery rate ``q`` (JRSS-B 1995).

    Reject the k* smallest p-values, k* = max{k : p_(k) ≤ k·q/m}. Conformal p-values sharing one
    calibration set are positively dependent (PRDS), so BH still controls the FDR on them
    (Bates et al., Ann. Stat. 2023).

    Returns:
        Boolean mask, True where the hypothesis is rejected (the sample is flagged as leaking).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if p.ndim != 1 or np.any(np.isnan(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("pvalues must be a 1-D array of probabilities")
    order = np.argsort(p, kind="stable")
    passed = np.flatnonzero(p[order] <= q * np.arange(1, p.size + 1) / max(p.size, 1))
    rejected = np.zeros(p.size, dtype=bool)
    if passed.size:
        rejected[order[: passed[-1] + 1]] = True
    return rejected


def signal_remaining(auc_u: float, auc_o: float, auc_ref: float) -> float | None:
    """Share of the original model's membership signal still present after unlearning.

    (AUC_U − AUC_ref) / (AUC_O − AUC_ref): 1 = nothing forgotten, 0 = like retraining, < 0 =
    over-forgotten. ``None`` when AUC_O − AUC_ref < 0.01: the original carried no usable signal.
    """
    denominator = auc_o - auc_ref
    return None if denominator < 0.01 else (auc_u - auc_ref) / denominator


def min_detectable_auc_delta(
    n_forget: int, n_heldout: int, *, alpha: float, power: float = 0.8
) -> float:
    """Smallest |AUC − 0.5| the one-sided AUC test at level α/2 detects with the given power.

    Uses the Mann-Whitney null standard deviation of the AUC, √((n1+n2+1)/(12·n1·n2)) (Hanley &
    McNeil, Radiology 1982, via Var(U) = n1·n2·(n1+n2+1)/12), times z_{1−α/2} + z_power; ``alpha``
    is the rule's family-wise α, of which the AUC test gets α/2 per direction.
    """
    if n_forget < 1 or n_heldout < 1:
        raise ValueError("sample sizes must be positive")
    sd = math.sqrt((n_forget + n_heldout + 1) / (12.0 * n_forget * n_heldout))
    return sd * (normal_quantile(1.0 - alpha / 2.0) + normal_quantile(power))


def attack_metrics(
    scores: AttackScores,
    *,
    rng: np.random.Generator,
    fprs: Sequence[float] = (0.01, 0.001),
    tail_fpr: float = 0.01,
    fdr_q: float = 0.05,
    n_boot: int = 1000,
) -> AttackMetrics:
    """Every metric of one model's scores (audit.md, "Metrics"), in a fixed, seedable order."""
    pos, neg = scores.forget, scores.heldout
    p_upper, p_lower = auc_test(pos, neg)
    pvalues = conformal_pvalues(pos, neg)
    leaking = np.flatnonzero(benjamini_hochberg(pvalues, q=fdr_q))
    return AttackMetrics(
        attack=scores.attack,
        n_forget=len(pos),
        n_heldout=len(neg),
        auc=auc_interval(pos, neg, rng=rng, n_boot=n_boot),
        auc_p_upper=p_upper,
        auc_p_lower=p_lower,
        tpr=tuple(tpr_at_fpr(pos, neg, fpr=fpr) for fpr in fprs),
        tail_upper=tail_test(pos, neg, fpr=tail_fpr, side="upper"),
        tail_lower=tail_test(pos, neg, fpr=tail_fpr, side="lower"),
        fdr_q=fdr_q,
        n_leaking=len(leaking),
        leaking=tuple(int(i) for i in leaking),
        conformal_p=tuple(float(p) for p in pvalues),
    )


def roc_curve(pos: npt.ArrayLike, neg: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """ROC of F (positives) vs H (negatives): (FPR, TPR) at every distinct threshold, from (0, 0)
    to (1, 1). Used for the log-log ROC plot (Carlini et al. 2022 argue for log scales)."""
    pos_a = np.asarray(pos, dtype=np.float64)
    neg_a = np.asarray(neg, dtype=np.float64)
    thresholds = np.unique(np.concatenate([pos_a, neg_a]))[::-1]
    pos_sorted, neg_sorted = np.sort(pos_a), np.sort(neg_a)
    tpr = (len(pos_a) - np.searchsorted(pos_sorted, thresholds, side="left")) / len(pos_a)
    fpr = (len(neg_a) - np.searchsorted(neg_sorted, thresholds, side="left")) / len(neg_a)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]
