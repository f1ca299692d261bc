"""The target against its negative controls: a paired bootstrap over the shared samples (numpy).

Why relative to the references (audit.md, "Verdict", revised): F and H can differ for reasons
other than training (the train and test splits were collected differently, whole classes, hard
samples). Every retrain carries the same difference, so comparing the target with 0.5 or with the
nominal FPR lets a shift that every model shares block a PASS, or produce a FAIL. Here each
reference model is audited as if it were the target against the other K−1 (its negative control),
and the target is scored against the *same* K−1 references, so target and control i are scored
alike and, for an exact retrain, are exchangeable draws (an exact null for each pair):

    Δ_AUC = mean_i AUC(s_U^{(−i)}) − mean_i AUC(s_i^{(−i)}),
    Δ_TPR = mean_i TPR(s_U^{(−i)}) − mean_i TPR(s_i^{(−i)})   (upper tail, the leak direction),
    Δ_low = the same for the share of F below H's lower FPR tail (the over-forgetting direction).

All models score the same F and H, so their sampling noise is strongly correlated; resampling F
and H once per replicate and applying the same multiplicities to every score vector (a paired,
stratified bootstrap, Efron & Tibshirani 1993, ch. 13) keeps that correlation and cancels the
shared part, which an unpaired interval would count twice. One-sided p-values are Wald tests with
the bootstrap standard error; intervals are percentile intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from unforget.mia.exact import normal_sf
from unforget.mia.metrics import auc
from unforget.mia.results import AttackScores, Estimate, ReferenceComparison

FloatArray = npt.NDArray[np.float64]

_BOOT_CELLS = 1 << 21  # resample weights held in memory at once, per chunk


def _allowed(n_heldout: int, fpr: float) -> int:
    """k = ⌊fpr·n_H⌋ held-out samples may lie beyond the threshold (as in ``tail_test``)."""
    return min(math.floor(fpr * n_heldout + 1e-9), n_heldout - 1)


def _tail_rates(scores: AttackScores, *, fpr: float) -> tuple[float, float]:
    """Shares of F strictly beyond the (k+1)-th largest and (k+1)-th smallest H score."""
    ordered, k = np.sort(scores.heldout), _allowed(len(scores.heldout), fpr)
    upper = float(np.mean(scores.forget > ordered[-1 - k]))
    lower = float(np.mean(scores.forget < ordered[k]))
    return upper, lower


class _Prepared:
    """One score vector, pre-sorted so each bootstrap replicate costs O(n_F + n_H)."""

    def __init__(self, scores: AttackScores) -> None:
        self.order = np.argsort(scores.heldout, kind="stable")
        self.sorted_h = scores.heldout[self.order]
        self.forget = scores.forget
        self.below = np.searchsorted(self.sorted_h, scores.forget, side="left")
        self.upto = np.searchsorted(self.sorted_h, scores.forget, side="right")

    def replicate(
        self, c: npt.NDArray[np.signedinteger], d: npt.NDArray[np.signedinteger], *, k: int
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """AUC, upper-tail and lower-tail share of each resample (rows of c over F, d over H).

        One cumulative sum D of the H multiplicities (in this vector's sorted order) gives all
        three: AUC* = Σ_i c_i·[D(< x_i) + ½·D(= x_i)] / (n_F·n_H) as in
        :func:`unforget.mia.metrics.weighted_aucs`; the (k+1)-th largest H score counted with
        multiplicity sits at index #{j : D_j ≤ n_H − k − 1}, the (k+1)-th smallest at
        #{j : D_j < k + 1}, so a replicate reads the tails exactly as the point estimate does.
        """
        b, n_h = d.shape
        n_f = c.shape[1]
        cum = np.zeros((b, n_h + 1), dtype=np.int32)
        np.cumsum(d[:, self.order], axis=1, out=cum[:, 1:])
        wins = cum[:, self.below] + cum[:, self.upto]  # twice the wins, in integers
        aucs = np.einsum("bi,bi->b", c, wins, dtype=np.float64) / (2.0 * n_f * n_h)
        upper_thr = self.sorted_h[np.sum(cum[:, 1:] <= n_h - k - 1, axis=1)]
        lower_thr = self.sorted_h[np.sum(cum[:, 1:] < k + 1, axis=1)]
        up = np.einsum("bi,bi->b", c, self.forget[None, :] > upper_thr[:, None], dtype=np.float64)
        low = np.einsum("bi,bi->b", c, self.forget[None, :] < lower_thr[:, None], dtype=np.float64)
        return aucs, up / n_f, low / n_f


def _one_sided(delta: float, draws: FloatArray) -> tuple[float, float]:
    """Wald p-values of Δ > 0 and Δ < 0 with the bootstrap standard error."""
    se = float(np.std(draws, ddof=1)) if draws.size > 1 else 0.0
    if se <= 0.0:
        if delta == 0.0:
            return 0.5, 0.5
        return (0.0, 1.0) if delta > 0.0 else (1.0, 0.0)
    return normal_sf(delta / se), normal_sf(-delta / se)


def _check(target: Sequence[AttackScores], controls: Sequence[AttackScores]) -> None:
    if not target or not controls:
        raise ValueError("need at least one target and one control score vector")
    shapes = {(len(s.forget), len(s.heldout)) for s in (*target, *controls)}
    if len(shapes) != 1:
        raise ValueError(f"every score vector must cover the same F and H, got sizes {shapes}")


def compare_with_references(
    target: Sequence[AttackScores],
    controls: Sequence[AttackScores],
    *,
    fpr: float,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> ReferenceComparison:
    """Paired comparison of the target with its negative controls (see the module docstring).

    Args:
        target: the target's scores, one vector per reference set (s_U^{(−i)}, i = 1..K), or a
            single vector scored against every reference; each over the same F and H.
        controls: each reference's scores against the other K−1 (s_i^{(−i)}), same F and H.
        fpr: operating point of the tail shares (H-calibrated, as in ``tpr_at_fpr``).
        rng: source of the resampling. n_boot: replicates (≥ 2). level: interval coverage.

    Returns:
        :class:`ReferenceComparison`; deterministic given ``rng``'s state.

    Raises:
        ValueError: on empty inputs, score vectors over different samples, or ``n_boot < 2``.
    """
    _check(target, controls)
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n_f, n_h = len(target[0].forget), len(target[0].heldout)
    k = _allowed(n_h, fpr)
    t_auc, t_up, t_low = _means(target, fpr=fpr)
    r_auc, r_up, r_low = _means(controls, fpr=fpr)
    delta = (t_auc - r_auc, t_up - r_up, t_low - r_low)
    prepared_t = [_Prepared(s) for s in target]
    prepared_c = [_Prepared(s) for s in controls]
    draws = np.empty((3, n_boot))
    rows = max(1, min(n_boot, _BOOT_CELLS // (n_f + n_h + 1)))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        offsets = np.arange(b)[:, None]
        d = np.bincount((rng.integers(0, n_h, (b, n_h)) + offsets * n_h).ravel(), minlength=b * n_h)
        c = np.bincount((rng.integers(0, n_f, (b, n_f)) + offsets * n_f).ravel(), minlength=b * n_f)
        c, d = c.reshape(b, n_f).astype(np.int32), d.reshape(b, n_h).astype(np.int32)
        t = np.mean([p.replicate(c, d, k=k) for p in prepared_t], axis=0)
        r = np.mean([p.replicate(c, d, k=k) for p in prepared_c], axis=0)
        draws[:, start : start + b] = t - r
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    (a_lo, a_hi), (u_lo, u_hi), (l_lo, l_hi) = (np.quantile(x, q) for x in draws)
    auc_p, up_p, low_p = (_one_sided(delta[i], draws[i]) for i in range(3))
    return ReferenceComparison(
        k=len(controls),
        fpr=fpr,
        n_boot=n_boot,
        auc_reference=r_auc,
        auc_difference=Estimate(value=delta[0], low=float(a_lo), high=float(a_hi)),
        auc_p_upper=auc_p[0],
        auc_p_lower=auc_p[1],
        tpr_reference=r_up,
        tpr_difference=Estimate(value=delta[1], low=float(u_lo), high=float(u_hi)),
        tail_p_upper=up_p[0],
        lower_tail_difference=Estimate(value=delta[2], low=float(l_lo), high=float(l_hi)),
        tail_p_lower=low_p[0],
    )


def _means(group: Sequence[AttackScores], *, fpr: float) -> tuple[float, float, float]:
    """Mean AUC, upper-tail share and lower-tail share over a group of score vectors."""
    aucs = [auc(s.forget, s.heldout) for s in group]
    tails = np.array([_tail_rates(s, fpr=fpr) for s in group])
    return float(np.mean(aucs)), float(tails[:, 0].mean()), float(tails[:, 1].mean())
