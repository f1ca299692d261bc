"""Membership scores from per-sample signals (numpy only). Higher score = more member-like.

The primary attack is pre-registered from the number K of reference ("shadow") models, all OUT
for both F and H (retrained without F): RMIA below 16 references, LiRA from 16, the population
loss attack without references (:func:`primary_attack_name`). The audit never reports the better
of several attacks, which would inflate its false-positive rate.

Population attacks (score = −loss or confidence) need no references but have little power at low
FPR, and ∇τ matches mean forget and held-out losses by construction. Without references the loss
attack is all there is: it can still show a leak, but the verdict cannot PASS on it. The
logistic-regression "MIA accuracy" is reported only for comparison with the unlearning papers
(SCRUB, SalUn, ∇τ); the verdict never reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from unforget.mia.metrics import auc

FloatArray = npt.NDArray[np.float64]
AttackName = Literal["rmia", "lira", "population-loss"]

LIRA_FROM_K = 16  # references from which LiRA replaces RMIA as the primary attack
PER_EXAMPLE_SIGMA_FROM_K = 64  # references from which LiRA estimates σ per example
RMIA_DEFAULT_A = 0.3  # offline a without a positive control (ML Privacy Meter's default)
RMIA_A_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
_TINY = 1e-300


def _reference_matrix(values: npt.ArrayLike, n: int, *, name: str) -> FloatArray:
    refs = np.asarray(values, dtype=np.float64)
    if refs.ndim != 2 or refs.shape[0] < 1 or refs.shape[1] != n:
        raise ValueError(f"{name} must have shape (K >= 1, {n}), got {refs.shape}")
    if not np.all(np.isfinite(refs)):
        raise ValueError(f"{name} contains non-finite values")
    return refs


def _vector(values: npt.ArrayLike, *, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a non-empty, finite 1-D array, got shape {array.shape}")
    return array


def rmia_offline(p_target: npt.ArrayLike, p_refs_out: npt.ArrayLike, *, a: float) -> FloatArray:
    """Offline RMIA score r(x) = p_θ(x) / P(x) (Zarifzadeh et al., ICML 2024, "Low-Cost
    High-Power Membership Inference Attacks").

    RMIA's pairwise likelihood ratio is LR_θ(x, z) = [p_θ(x)/P(x)] / [p_θ(z)/P(z)] and its score
    is Score(x) = Pr_z[LR_θ(x, z) ≥ γ] over population samples z. For a fixed population and γ,
    Score(x) = Pr_z[r(z) ≤ r(x)/γ] is a non-decreasing function of r(x), so ranking samples by
    r(x) gives the same ROC, AUC and thresholds as the pairwise score (up to ties), without a
    population set. Offline, only OUT references exist, and the paper approximates the marginal
    P(x) = ½[P_IN(x) + P_OUT(x)] linearly as P(x) = ½[(1+a)·m_out(x) + (1−a)].

    Args:
        p_target: true-class probability under the audited model, shape ``(N,)``.
        p_refs_out: true-class probability under each reference model, shape ``(K, N)``.
        a: offline interpolation constant in [0, 1] (see :func:`tune_rmia_a`).

    Returns:
        Scores of shape ``(N,)``; higher = more member-like.
    """
    p = _vector(p_target, name="p_target")
    refs = _reference_matrix(p_refs_out, p.size, name="p_refs_out")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"a must lie in [0, 1], got {a}")
    if np.any((p < 0.0) | (p > 1.0)) or np.any((refs < 0.0) | (refs > 1.0)):
        raise ValueError("probabilities must lie in [0, 1]")
    marginal = 0.5 * ((1.0 + a) * refs.mean(axis=0) + (1.0 - a))
    scores: FloatArray = p / np.maximum(marginal, _TINY)
    return scores


def tune_rmia_a(
    p_original: npt.ArrayLike | None,
    p_refs_out: npt.ArrayLike,
    *,
    is_forget: npt.ArrayLike,
    grid: Sequence[float] = RMIA_A_GRID,
) -> float:
    """Choose RMIA's a on the positive control: the a maximising AUC(F vs H) on the original model.

    The original model trained on F, so this AUC measures how well each a detects true members;
    a is fixed before the audited model is scored, so the target's result is not tuned on itself.
    Ties go to the smallest a. Without an original model, a = 0.3 (audit.md's fixed default).

    Args:
        p_original: true-class probabilities under the original model, shape ``(N,)``, or None.
        p_refs_out: reference probabilities, shape ``(K, N)``.
        is_forget: boolean mask of shape ``(N,)``, True for F and False for H.
        grid: candidate values of a (default 0, 0.1, ..., 1).

    Returns:
        The chosen a.
    """
    if p_original is None:
        return RMIA_DEFAULT_A
    mask = np.asarray(is_forget, dtype=bool)
    if mask.shape != np.shape(p_original) or mask.all() or not mask.any():
        raise ValueError("is_forget must be a mask over p_original with both F and H present")
    if len(grid) == 0:
        raise ValueError("grid must not be empty")
    aucs = []
    for a in grid:
        scores = rmia_offline(p_original, p_refs_out, a=a)
        aucs.append(auc(scores[mask], scores[~mask]))
    return float(grid[int(np.argmax(aucs))])


def lira_offline(phi_target: npt.ArrayLike, phi_refs_out: npt.ArrayLike) -> FloatArray:
    """Offline LiRA score z(x) = (φ_θ(x) − μ_out(x)) / σ (Carlini et al., S&P 2022, "Membership
    Inference Attacks From First Principles", the offline one-sided variant of LiRA).

    φ is the logit-scaled confidence log(p/(1−p)), which the paper shows is close to Gaussian
    over training runs. Offline LiRA fits N(μ_out(x), σ²) to the OUT references and reports the
    one-sided test 1 − Pr[Z > φ_θ(x)] = Φ(z(x)), a monotone function of z, so z ranks identically.
    Following the paper's advice for few shadow models, σ is one global value pooled from every
    residual φ_ref − μ_out (K−1 degrees of freedom per example); a per-example σ(x) is used only
    from K ≥ 64 references, where it can be estimated without blowing up the tails.

    Args:
        phi_target: logit-scaled confidence under the audited model, shape ``(N,)``.
        phi_refs_out: the same under each reference model, shape ``(K, N)``, K ≥ 2.

    Returns:
        Scores of shape ``(N,)``; higher = more member-like.
    """
    phi = _vector(phi_target, name="phi_target")
    refs = _reference_matrix(phi_refs_out, phi.size, name="phi_refs_out")
    k = refs.shape[0]
    if k < 2:
        raise ValueError("LiRA needs at least 2 reference models to estimate a variance")
    mu = refs.mean(axis=0)
    residuals = refs - mu
    if k >= PER_EXAMPLE_SIGMA_FROM_K:
        sigma = np.sqrt(np.sum(residuals**2, axis=0) / (k - 1))
    else:
        sigma = np.full(phi.size, np.sqrt(np.sum(residuals**2) / (phi.size * (k - 1))))
    scores: FloatArray = (phi - mu) / np.maximum(sigma, 1e-12)
    return scores


def primary_attack_name(k: int) -> AttackName:
    """The pre-registered primary attack for K reference models (audit.md, "Per-sample scores").

    ``"population-loss"`` without references, ``"rmia"`` for 1 ≤ K < 16 (works from one
    reference), ``"lira"`` from 16 (enough OUT models for its Gaussian fit). Never the best of both.
    """
    if k < 0:
        raise ValueError(f"number of reference models must be >= 0, got {k}")
    if k == 0:
        return "population-loss"
    return "rmia" if k < LIRA_FROM_K else "lira"


def loss_attack_scores(loss: npt.ArrayLike) -> FloatArray:
    """Population loss attack (Yeom et al., CSF 2018): score = −loss, so lower loss = member."""
    return -_vector(loss, name="loss")


def confidence_scores(p: npt.ArrayLike) -> FloatArray:
    """Population confidence attack: score = true-class probability p."""
    return _vector(p, name="p").copy()


def _features(loss: npt.ArrayLike, entropy: npt.ArrayLike | None, *, name: str) -> FloatArray:
    columns = [_vector(loss, name=f"{name} loss")]
    if entropy is not None:
        columns.append(_vector(entropy, name=f"{name} entropy"))
        if columns[1].size != columns[0].size:
            raise ValueError(f"{name} loss and entropy differ in length")
    return np.column_stack(columns)


def _fit_logistic(x: FloatArray, y: FloatArray, *, l2: float) -> FloatArray:
    """L2-penalised logistic regression by Newton-Raphson (IRLS); intercept is the last weight.

    Kept hand-written (issue 15): scikit-learn's ``LogisticRegression`` would fit the same
    model, but only for this one legacy comparison number, at the cost of scikit-learn, scipy,
    joblib and threadpoolctl as runtime dependencies (~200 MB installed).

    Minimises Σ log-loss + (l2/2)·‖w‖² over the feature weights (the intercept is unpenalised up
    to a 1e-8 ridge that keeps the Hessian invertible when the classes separate).
    """
    design = np.column_stack([x, np.ones(len(x))])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 1e-8
    w = np.zeros(design.shape[1])
    for _ in range(100):
        prob = 0.5 * (1.0 + np.tanh(0.5 * (design @ w)))
        grad = design.T @ (prob - y) + penalty * w
        hessian = (design.T * (prob * (1.0 - prob))) @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def logistic_regression_mia_accuracy(
    forget_loss: npt.ArrayLike,
    heldout_loss: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    folds: int = 5,
    forget_entropy: npt.ArrayLike | None = None,
    heldout_entropy: npt.ArrayLike | None = None,
    l2: float = 1.0,
) -> float:
    """The unlearning papers' "MIA" number: cross-validated logistic regression, F vs H.

    As in SCRUB (Kurmanji et al., NeurIPS 2023, "Towards Unbounded Machine Unlearning", MIA
    evaluation) and ∇τ (Trippa et al. 2024), which use it on per-sample loss (and entropy):
    both sets are subsampled to the same size, a logistic regression is fitted on standardised
    features in ``folds`` stratified folds, and the mean held-out-fold accuracy is returned;
    0.5 = chance. ``l2 = 1`` matches scikit-learn's default (C = 1). Reported for comparison
    only: ∇τ matches mean losses by construction, so this reads ~0.5 after it regardless.

    Args:
        forget_loss, heldout_loss: per-sample losses of F and H, shapes ``(n_F,)``, ``(n_H,)``.
        rng: drives the balanced subsample and the fold assignment.
        folds: number of cross-validation folds, ≥ 2.
        forget_entropy, heldout_entropy: optional predictive entropies as a second feature.
        l2: ridge penalty on the standardised feature weights.

    Returns:
        Mean cross-validated accuracy in [0, 1].
    """
    if (forget_entropy is None) != (heldout_entropy is None):
        raise ValueError("give entropy for both F and H, or for neither")
    f = _features(forget_loss, forget_entropy, name="forget")
    h = _features(heldout_loss, heldout_entropy, name="held-out")
    n = min(len(f), len(h))
    if folds < 2 or n < folds:
        raise ValueError(f"need folds >= 2 and at least {folds} samples per set, got {n}")
    x = np.vstack(
        [f[rng.choice(len(f), n, replace=False)], h[rng.choice(len(h), n, replace=False)]]
    )
    y = np.concatenate([np.ones(n), np.zeros(n)])
    fold_of = np.concatenate([rng.permutation(n) % folds, rng.permutation(n) % folds])
    accuracies = []
    for fold in range(folds):
        test = fold_of == fold
        mean, sd = x[~test].mean(axis=0), x[~test].std(axis=0)
        sd[sd == 0.0] = 1.0
        w = _fit_logistic((x[~test] - mean) / sd, y[~test], l2=l2)
        logits = ((x[test] - mean) / sd) @ w[:-1] + w[-1]
        accuracies.append(np.mean((logits > 0.0) == (y[test] == 1.0)))
    return float(np.mean(accuracies))
