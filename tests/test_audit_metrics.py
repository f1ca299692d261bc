"""Audit statistics against slow, obvious references, hand-worked values and properties.

Conventions under test (unforget.mia.results): higher score = more member-like; ``pos`` = forget
scores F, ``neg`` = held-out scores H.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unforget.mia import attacks, exact, metrics
from unforget.mia.results import AttackScores

FAST = settings(max_examples=60, deadline=None)
small_ints = st.lists(st.integers(-20, 20), min_size=1, max_size=30)


def slow_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC by definition: average over all pairs of 1[x > y] + ½·1[x = y]."""
    total = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in pos for y in neg)
    return total / (len(pos) * len(neg))


def slow_bh(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg by definition: reject the k* smallest, k* = max{k: p_(k) <= k q / m}."""
    m, order = len(p), np.argsort(p, kind="stable")
    k_star = max((k for k in range(1, m + 1) if p[order[k - 1]] <= k * q / m), default=0)
    rejected = np.zeros(m, dtype=bool)
    rejected[order[:k_star]] = True
    return rejected


# --- AUC ---------------------------------------------------------------------------------------


@FAST
@given(small_ints, small_ints)
def test_auc_matches_pairwise_definition_with_ties(pos: list[int], neg: list[int]) -> None:
    assert metrics.auc(pos, neg) == pytest.approx(slow_auc(np.array(pos), np.array(neg)))


@FAST
@given(small_ints, small_ints)
def test_auc_is_antisymmetric(pos: list[int], neg: list[int]) -> None:
    assert metrics.auc(pos, neg) == pytest.approx(1.0 - metrics.auc(neg, pos))


@FAST
@given(small_ints, small_ints)
def test_auc_invariant_under_strictly_monotone_transform(pos: list[int], neg: list[int]) -> None:
    def transform(x: list[int]) -> np.ndarray:
        return np.exp(np.array(x) / 7.0) - 3.0

    assert metrics.auc(transform(pos), transform(neg)) == pytest.approx(metrics.auc(pos, neg))


@FAST
@given(small_ints, st.integers(1, 30))
def test_auc_is_one_when_separated_and_zero_when_reversed(neg: list[int], n_pos: int) -> None:
    pos = [max(neg) + 1 + i for i in range(n_pos)]
    assert metrics.auc(pos, neg) == 1.0
    assert metrics.auc(neg, pos) == 0.0


def test_auc_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        metrics.auc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.auc([np.nan], [1.0])


def test_auc_test_matches_scipy_asymptotic_mann_whitney() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.3, -0.3):
        pos = np.round(rng.normal(shift, 1.0, 80), 1)  # rounding creates ties
        neg = np.round(rng.normal(0.0, 1.0, 120), 1)
        p_upper, p_lower = metrics.auc_test(pos, neg)
        for alternative, ours in (("greater", p_upper), ("less", p_lower)):
            ref = stats.mannwhitneyu(pos, neg, alternative=alternative, method="asymptotic")
            assert ours == pytest.approx(ref.pvalue, rel=1e-9)


def test_auc_test_all_tied_gives_no_evidence() -> None:
    assert metrics.auc_test([1.0, 1.0], [1.0, 1.0, 1.0]) == (1.0, 1.0)


# --- bootstrap intervals -----------------------------------------------------------------------


def test_weighted_auc_equals_auc_of_explicit_resample() -> None:
    """The multiplicity trick: weights (c, d) give exactly the AUC of the repeated arrays."""
    rng = np.random.default_rng(1)
    pos, neg = np.round(rng.normal(0.5, 1, 40), 1), np.round(rng.normal(0, 1, 60), 1)
    ordered = np.sort(neg)
    below = np.searchsorted(ordered, pos, side="left")
    upto = np.searchsorted(ordered, pos, side="right")
    c, d = rng.integers(0, 4, (5, 40)), rng.integers(0, 4, (5, 60))
    fast = metrics.weighted_aucs(below, upto, c, d)
    for row in range(5):
        assert c[row].sum() > 0 and d[row].sum() > 0
        slow = slow_auc(np.repeat(pos, c[row]), np.repeat(ordered, d[row]))
        scale = (c[row].sum() * d[row].sum()) / (40 * 60)
        assert fast[row] == pytest.approx(slow * scale)


def test_auc_interval_is_deterministic_and_matches_analytic_spread() -> None:
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(0.2, 1, 1000), rng.normal(0, 1, 5000)
    first = metrics.auc_interval(pos, neg, rng=np.random.default_rng(7))
    again = metrics.auc_interval(pos, neg, rng=np.random.default_rng(7))
    other = metrics.auc_interval(pos, neg, rng=np.random.default_rng(8))
    assert first == again and first != other
    assert first.low < first.value < first.high
    analytic_sd = math.sqrt((1000 + 5000 + 1) / (12 * 1000 * 5000))  # H0 value, close at AUC .56
    assert (first.high - first.low) / (2 * 1.96) == pytest.approx(analytic_sd, rel=0.15)


def slow_tpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> tuple[float, float]:
    threshold = sorted(neg, reverse=True)[math.floor(fpr * len(neg) + 1e-9)]
    return float(threshold), sum(x > threshold for x in pos) / len(pos)


@FAST
@given(small_ints, st.lists(st.integers(-20, 20), min_size=2, max_size=60))
def test_tpr_at_fpr_matches_reference_and_is_monotone(pos: list[int], neg: list[int]) -> None:
    previous = -1.0
    for fpr in (0.01, 0.05, 0.1, 0.2, 0.5, 0.9):
        result = metrics.tpr_at_fpr(pos, neg, fpr=fpr)
        threshold, tpr = slow_tpr(np.array(pos), np.array(neg), fpr)
        assert result.threshold == threshold and result.tpr == pytest.approx(tpr)
        assert np.mean(np.array(neg) > result.threshold) <= fpr  # held-out FPR never exceeded
        assert result.low <= result.tpr <= result.high
        assert result.tpr >= previous
        previous = result.tpr


def test_tpr_resolvable_needs_ten_heldout_in_the_tail() -> None:
    pos = np.arange(50.0)
    assert metrics.tpr_at_fpr(pos, np.arange(1000.0), fpr=0.01).resolvable
    assert not metrics.tpr_at_fpr(pos, np.arange(999.0), fpr=0.01).resolvable


def test_tail_test_null_is_exact_by_enumerating_all_rank_assignments() -> None:
    """n_F = 3, n_H = 5, k = 1: every one of the C(8, 3) F/H orderings is equally likely."""
    n_f, n_h, fpr = 3, 5, 0.2
    counts = np.zeros(n_f + 1)
    for f_ranks in itertools.combinations(range(n_f + n_h), n_f):
        pos = np.array(f_ranks, dtype=float)
        neg = np.array([r for r in range(n_f + n_h) if r not in f_ranks], dtype=float)
        counts[metrics.tail_test(pos, neg, fpr=fpr, side="upper").observed] += 1
    pmf = counts / counts.sum()
    for x in range(n_f + 1):
        pos = np.array([10.0] * x + [-10.0] * (n_f - x))
        test = metrics.tail_test(pos, np.arange(n_h, dtype=float), fpr=fpr, side="upper")
        assert test.observed == x
        assert test.p_value == pytest.approx(pmf[x:].sum())


def test_tail_test_detects_both_directions_and_holds_level() -> None:
    rng = np.random.default_rng(4)
    neg = rng.normal(0, 1, 5000)
    up = metrics.tail_test(rng.normal(1.5, 1, 500), neg, fpr=0.01, side="upper")
    down = metrics.tail_test(rng.normal(-1.5, 1, 500), neg, fpr=0.01, side="lower")
    assert up.p_value < 1e-10 and down.p_value < 1e-10
    assert up.expected == pytest.approx(500 * 51 / 5001)
    null = [
        metrics.tail_test(rng.normal(0, 1, 50), rng.normal(0, 1, 300), fpr=0.05, side=side)
        for side in ("upper", "lower")
        for _ in range(200)
    ]
    assert np.mean([t.p_value < 0.05 for t in null]) <= 0.07


# --- conformal p-values and BH ------------------------------------------------------------------


@FAST
@given(small_ints, small_ints)
def test_conformal_pvalues_match_definition(pos: list[int], neg: list[int]) -> None:
    p = metrics.conformal_pvalues(pos, neg)
    slow = [(1 + sum(h >= f for h in neg)) / (1 + len(neg)) for f in pos]
    assert np.allclose(p, slow)
    assert np.all((p > 0.0) & (p <= 1.0))


def test_conformal_pvalues_are_valid_under_exchangeability() -> None:
    """P(p <= u) <= u holds over calibration sets; one fixed H of 2000 moves it by ~√(u/2000)."""
    rng = np.random.default_rng(5)
    p = metrics.conformal_pvalues(rng.normal(size=20000), rng.normal(size=2000))
    assert p.mean() == pytest.approx(0.5, abs=0.01)
    for u in (0.01, 0.05, 0.2, 0.5):
        assert np.mean(p <= u) <= u + 3.0 * math.sqrt(u * (1.0 - u) / 2000)


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40), st.sampled_from([0.01, 0.05, 0.2]))
def test_benjamini_hochberg_matches_definition(p: list[float], q: float) -> None:
    arr = np.array(p)
    assert np.array_equal(metrics.benjamini_hochberg(arr, q=q), slow_bh(arr, q))


def test_benjamini_hochberg_hand_example() -> None:
    """m = 4, q = 0.05: thresholds .0125 .025 .0375 .05; p_(3) = .03 passes, so 3 rejections."""
    p = np.array([0.03, 0.001, 0.2, 0.02])
    assert metrics.benjamini_hochberg(p, q=0.05).tolist() == [True, True, False, True]


# --- summary numbers ----------------------------------------------------------------------------


def test_signal_remaining() -> None:
    assert metrics.signal_remaining(0.55, 0.7, 0.5) == pytest.approx(0.25)
    assert metrics.signal_remaining(0.55, 0.505, 0.5) is None
    assert metrics.signal_remaining(0.55, 0.45, 0.5) is None


def test_min_detectable_auc_delta_hand_value_and_shrinks_with_n() -> None:
    """n1 = n2 = 1000, α = 0.01: √(2001/12e6) · (2.5758 + 0.8416) = 0.04413."""
    assert metrics.min_detectable_auc_delta(1000, 1000, alpha=0.01) == pytest.approx(
        math.sqrt(2001 / 12e6) * (2.5758293035489 + 0.8416212335729), rel=1e-9
    )
    sizes = [10, 100, 1000, 10000]
    values = [metrics.min_detectable_auc_delta(n, 10000, alpha=0.01) for n in sizes]
    assert values == sorted(values, reverse=True)


def test_attack_metrics_bundles_everything_deterministically() -> None:
    rng = np.random.default_rng(6)
    scores = AttackScores(
        attack="rmia", forget=rng.normal(0.3, 1, 300), heldout=rng.normal(0, 1, 2000)
    )
    first = metrics.attack_metrics(scores, rng=np.random.default_rng(1), n_boot=200)
    again = metrics.attack_metrics(scores, rng=np.random.default_rng(1), n_boot=200)
    assert first == again and first.leaking == again.leaking
    assert first.n_leaking == len(first.leaking) and len(first.conformal_p) == 300
    assert first.tpr_at(0.001).fpr == 0.001
    with pytest.raises(ValueError, match="available"):
        first.tpr_at(0.05)


# --- exact distributions ------------------------------------------------------------------------


def test_log_factorial_matches_lgamma() -> None:
    m = np.array([0, 1, 2, 10, 31, 32, 33, 100, 12345, 10**6])
    expected = [math.lgamma(int(x) + 1) for x in m]
    assert np.allclose(exact.log_factorial(m), expected, rtol=1e-14, atol=1e-12)


def test_clopper_pearson_hand_values() -> None:
    """k = 0: upper = 1 − 0.025^(1/n); k = n: lower = 0.025^(1/n) (n = 10: .308497, .691503)."""
    low, high = exact.clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025**0.1, rel=1e-12)
    assert high == pytest.approx(0.3084971078, rel=1e-9)
    low, high = exact.clopper_pearson(10, 10)
    assert low == pytest.approx(0.025**0.1, rel=1e-12) and high == 1.0


@pytest.mark.parametrize(
    ("k", "n"), [(1, 10), (5, 10), (1, 100), (10, 1000), (50, 10000), (3, 10**6)]
)
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    ref = stats.binomtest(k, n).proportion_ci(method="exact")
    low, high = exact.clopper_pearson(k, n)
    assert low == pytest.approx(ref.low, rel=1e-6)  # scipy's beta.ppf is the less exact one
    assert high == pytest.approx(ref.high, rel=1e-6)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 10, 0.3), (3, 10, 0.2), (50, 1000, 0.01), (2, 10**6, 6e-7), (9990, 10**6, 0.01)],
)
def test_binomial_tails_match_scipy(k: int, n: int, p: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    assert exact.binom_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-8)
    assert exact.binom_sf(k, n, p) == pytest.approx(stats.binom.sf(k, n, p), rel=1e-8)


def test_binomial_tails_hand_values() -> None:
    assert exact.binom_cdf(0, 10, 0.3) == pytest.approx(0.7**10)
    assert exact.binom_sf(9, 10, 0.3) == pytest.approx(0.3**10)
    assert exact.binom_sf(50, 1000, 0.01) == pytest.approx(1.55569693155e-20, rel=1e-9)
    assert (exact.binom_cdf(-1, 5, 0.5), exact.binom_cdf(5, 5, 0.5)) == (0.0, 1.0)


def test_beta_binomial_matches_scipy_pmf_sums() -> None:
    """Against Σ pmf, not scipy's sf, which is 1 − cdf and reads 0.0 at (40, 1000, 101, 9900)."""
    stats = pytest.importorskip("scipy.stats")
    for x, n, a, b in [(3, 100, 11, 990), (0, 10, 1, 1), (40, 1000, 101, 9900)]:
        ours = exact.beta_binom_sf(x, n, a=a, b=b)
        ref = stats.betabinom.pmf(np.arange(x + 1, n + 1), n, a, b).sum()
        assert ours == pytest.approx(ref, rel=1e-8)
    assert exact.beta_binom_sf(40, 1000, a=101, b=9900) == pytest.approx(7.49434898016e-12)


def test_normal_quantile_hand_values() -> None:
    assert exact.normal_quantile(0.975) == pytest.approx(1.959963984540054, rel=1e-12)
    assert exact.normal_quantile(0.8) == pytest.approx(0.8416212335729143, rel=1e-12)
    assert exact.normal_quantile(1e-10) == pytest.approx(-6.361340902404056, rel=1e-10)
    assert exact.normal_quantile(0.5) == pytest.approx(0.0, abs=1e-15)


# --- attacks ------------------------------------------------------------------------------------


def test_rmia_with_a_equal_one_is_the_plain_ratio_to_the_reference_mean() -> None:
    rng = np.random.default_rng(7)
    refs = rng.uniform(0.05, 1.0, (4, 50))
    target = rng.uniform(0.05, 1.0, 50)
    assert np.allclose(attacks.rmia_offline(target, refs, a=1.0), target / refs.mean(axis=0))
    marginal = 0.5 * (1.3 * refs.mean(axis=0) + 0.7)
    assert np.allclose(attacks.rmia_offline(target, refs, a=0.3), target / marginal)


def test_rmia_ratio_ranks_like_the_pairwise_score() -> None:
    """Score(x) = Pr_z[r(x)/r(z) >= γ] is non-decreasing in r(x) (Zarifzadeh et al. 2024)."""
    rng = np.random.default_rng(8)
    r = attacks.rmia_offline(rng.uniform(0, 1, 400), rng.uniform(0.1, 1, (2, 400)), a=0.3)
    population = r[:200]
    pairwise = np.array([np.mean(x / population >= 1.0) for x in r])
    order = np.argsort(r)
    assert np.all(np.diff(pairwise[order]) >= 0.0)


def test_rmia_on_a_model_exchangeable_with_its_references_reads_chance() -> None:
    rng = np.random.default_rng(9)
    difficulty = rng.uniform(0.2, 0.95, 4000)

    def draw() -> np.ndarray:
        return np.clip(difficulty + rng.normal(0, 0.05, 4000), 0, 1)

    scores = attacks.rmia_offline(draw(), np.stack([draw() for _ in range(4)]), a=0.3)
    assert metrics.auc(scores[:2000], scores[2000:]) == pytest.approx(0.5, abs=0.03)


def test_tune_rmia_a_picks_the_best_grid_value_on_the_positive_control() -> None:
    rng = np.random.default_rng(10)
    refs = rng.uniform(0.1, 0.9, (3, 600))
    is_forget = np.arange(600) < 200
    original = np.clip(refs.mean(axis=0) + 0.1 * is_forget + rng.normal(0, 0.05, 600), 0, 1)
    chosen = attacks.tune_rmia_a(original, refs, is_forget=is_forget)
    assert chosen in attacks.RMIA_A_GRID
    best = max(
        metrics.auc(s[is_forget], s[~is_forget])
        for s in (attacks.rmia_offline(original, refs, a=a) for a in attacks.RMIA_A_GRID)
    )
    s = attacks.rmia_offline(original, refs, a=chosen)
    assert metrics.auc(s[is_forget], s[~is_forget]) == best
    assert attacks.tune_rmia_a(None, refs, is_forget=is_forget) == 0.3


@pytest.mark.parametrize("k", [16, 64])
def test_lira_calibrates_per_example_difficulty(k: int) -> None:
    """Members gain +2 in φ; examples differ in difficulty by sd 3, which hides that from raw φ."""
    rng = np.random.default_rng(11)
    n = 2000
    mu = rng.normal(0, 3, n)
    member = np.arange(n) < 1000
    refs = mu + rng.normal(0, 1, (k, n))
    target = mu + rng.normal(0, 1, n) + 2.0 * member
    z = attacks.lira_offline(target, refs)
    assert metrics.auc(z[member], z[~member]) > 0.9
    assert metrics.auc(target[member], target[~member]) < 0.75
    with pytest.raises(ValueError, match="at least 2"):
        attacks.lira_offline(target, refs[:1])


@pytest.mark.parametrize(
    ("k", "name"), [(0, "population-loss"), (1, "rmia"), (15, "rmia"), (16, "lira"), (64, "lira")]
)
def test_primary_attack_is_preregistered_by_k(k: int, name: str) -> None:
    assert attacks.primary_attack_name(k) == name


def test_population_scores_follow_the_higher_is_member_convention() -> None:
    assert attacks.loss_attack_scores([0.1, 2.0]).tolist() == [-0.1, -2.0]
    assert attacks.confidence_scores([0.9, 0.2]).tolist() == [0.9, 0.2]


def test_logistic_fit_reaches_the_penalised_optimum() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(size=(300, 2))
    y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(float)
    w = attacks._fit_logistic(x, y, l2=1.0)
    design = np.column_stack([x, np.ones(300)])
    prob = 1.0 / (1.0 + np.exp(-design @ w))
    grad = design.T @ (prob - y) + np.array([1.0, 1.0, 1e-8]) * w
    assert np.max(np.abs(grad)) < 1e-8


def test_logistic_regression_mia_accuracy_reads_chance_and_separation() -> None:
    rng = np.random.default_rng(13)
    same = attacks.logistic_regression_mia_accuracy(
        rng.exponential(1, 800), rng.exponential(1, 3000), rng=np.random.default_rng(0)
    )
    apart = attacks.logistic_regression_mia_accuracy(
        rng.exponential(0.01, 800),
        rng.exponential(1, 3000) + 0.5,
        rng=np.random.default_rng(0),
        forget_entropy=rng.uniform(0, 1, 800),
        heldout_entropy=rng.uniform(0, 1, 3000),
    )
    assert same == pytest.approx(0.5, abs=0.05)
    assert apart > 0.98
    with pytest.raises(ValueError, match="both"):
        attacks.logistic_regression_mia_accuracy(
            [1.0] * 10, [1.0] * 10, rng=np.random.default_rng(0), forget_entropy=[0.0] * 10
        )
