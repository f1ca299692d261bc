"""The paired target-vs-references comparison (``unforget.mia.comparison``).

The bootstrap is checked against a slow, obvious implementation (materialise each resample and
recompute AUC and tail shares from scratch), and on the property it exists for: a component
every model shares cancels in the paired difference, so its interval is much narrower than the
two models' separate intervals would suggest.
"""

from __future__ import annotations

import numpy as np
import pytest

from unforget.mia import metrics
from unforget.mia.comparison import _allowed, _Prepared, _tail_rates, compare_with_references
from unforget.mia.results import AttackScores


def scores(forget: np.ndarray, heldout: np.ndarray) -> AttackScores:
    return AttackScores(attack="rmia", forget=forget, heldout=heldout)


def test_replicate_matches_a_materialised_resample() -> None:
    rng = np.random.default_rng(0)
    # Rounded scores: ties inside H and between F and H exercise the midrank and tail rules.
    s = scores(np.round(rng.normal(0.3, 1, 60), 1), np.round(rng.normal(0, 1, 400), 1))
    c = rng.multinomial(60, np.full(60, 1 / 60), size=3).astype(np.int32)
    d = rng.multinomial(400, np.full(400, 1 / 400), size=3).astype(np.int32)
    k = _allowed(400, 0.01)
    aucs, up, low = _Prepared(s).replicate(c, d, k=k)
    for b in range(3):
        resample = scores(np.repeat(s.forget, c[b]), np.repeat(s.heldout, d[b]))
        assert aucs[b] == pytest.approx(metrics.auc(resample.forget, resample.heldout), abs=1e-12)
        assert (up[b], low[b]) == pytest.approx(_tail_rates(resample, fpr=0.01), abs=1e-12)


def test_tail_rates_agree_with_tpr_at_fpr() -> None:
    rng = np.random.default_rng(1)
    s = scores(rng.normal(0.5, 1, 300), rng.normal(0, 1, 2000))
    assert _tail_rates(s, fpr=0.01)[0] == metrics.tpr_at_fpr(s.forget, s.heldout, fpr=0.01).tpr


def test_target_equal_to_its_controls_differs_by_nothing() -> None:
    rng = np.random.default_rng(2)
    s = scores(rng.normal(0.4, 1, 200), rng.normal(0, 1, 1000))
    c = compare_with_references([s], [s, s], fpr=0.01, rng=rng, n_boot=200)
    assert c.auc_difference.value == 0.0 and c.auc_difference.low == c.auc_difference.high == 0.0
    assert (c.auc_p_upper, c.auc_p_lower, c.tail_p_upper) == (0.5, 0.5, 0.5)
    assert c.auc_reference == pytest.approx(metrics.auc(s.forget, s.heldout))


def test_a_shared_component_cancels_in_the_paired_interval() -> None:
    """Scores = shared per-sample part (with F shifted: a shift every model has) + model noise.
    The paired interval of AUC_U − AUC_ref must be far narrower than the unpaired one, and the
    shift must not show up as a difference."""
    rng = np.random.default_rng(3)
    n_f, n_h = 500, 2000
    shared_f, shared_h = rng.normal(0.5, 1, n_f), rng.normal(0, 1, n_h)

    def model() -> AttackScores:
        return scores(shared_f + rng.normal(0, 0.3, n_f), shared_h + rng.normal(0, 0.3, n_h))

    target, controls = model(), [model() for _ in range(4)]
    c = compare_with_references([target], controls, fpr=0.01, rng=rng, n_boot=400)
    assert c.auc_reference > 0.6  # the shared shift is there ...
    assert c.auc_difference.low < 0.0 < c.auc_difference.high  # ... and cancels
    single = metrics.auc_interval(target.forget, target.heldout, rng=rng, n_boot=400)
    unpaired_half = (single.high - single.low) / 2 * np.sqrt(1 + 1 / 4)
    paired_half = (c.auc_difference.high - c.auc_difference.low) / 2
    assert paired_half < 0.5 * unpaired_half


def test_a_leaking_target_is_detected_against_its_controls() -> None:
    rng = np.random.default_rng(4)
    shared_f, shared_h = rng.normal(0, 1, 300), rng.normal(0, 1, 3000)

    def model(bonus: float) -> AttackScores:
        return scores(
            shared_f + bonus + rng.normal(0, 0.5, 300), shared_h + rng.normal(0, 0.5, 3000)
        )

    c = compare_with_references([model(1.0)], [model(0.0)] * 2, fpr=0.01, rng=rng, n_boot=300)
    assert c.auc_difference.low > 0.1 and c.auc_p_upper < 1e-6
    assert c.tpr_difference.value > 0.03 and c.tail_p_upper < 1e-3
    assert c.tail_p_lower > 0.5


def test_same_rng_state_same_result_and_inputs_validated() -> None:
    rng = np.random.default_rng(5)
    s, t = (
        scores(rng.normal(size=50), rng.normal(size=500)),
        scores(rng.normal(size=50), rng.normal(size=500)),
    )
    first = compare_with_references([s], [t], fpr=0.01, rng=np.random.default_rng(9), n_boot=50)
    assert first == compare_with_references(
        [s], [t], fpr=0.01, rng=np.random.default_rng(9), n_boot=50
    )
    with pytest.raises(ValueError, match="same F and H"):
        compare_with_references([s], [scores(t.forget[:10], t.heldout)], fpr=0.01, rng=rng)
    with pytest.raises(ValueError, match="at least one"):
        compare_with_references([], [t], fpr=0.01, rng=rng)
    with pytest.raises(ValueError, match="n_boot"):
        compare_with_references([s], [t], fpr=0.01, rng=rng, n_boot=1)
