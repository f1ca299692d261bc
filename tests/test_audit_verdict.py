"""The verdict rule, its sample-size pre-check and the result types, branch by branch.

Rule under test (audit.md, "Verdict", revised), α = 0.01 split as α/2 = 0.005 per kind of test,
every test and margin relative to the negative controls (references audited the same way):
FAIL-LEAK = an upper test rejects AND (Δ_AUC ≥ δ OR Δ_TPR@1% ≥ 3%), or more flagged leaking IDs
than the references explain; FAIL-OVER = a lower test rejects AND −Δ_AUC ≥ δ; PASS = nothing
rejects, the Δ_AUC interval is inside ±δ, the Δ_TPR upper bound is below 3%, K ≥ 2, no flagged
IDs, no diagnostics; else INCONCLUSIVE with the effects the run rules out.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest

from unforget.mia.power import sample_size_check
from unforget.mia.results import (
    AttackMetrics,
    AttackScores,
    Estimate,
    ReferenceComparison,
    Side,
    TailTest,
    TprAtFpr,
    Verdict,
    VerdictRule,
    as_json,
)
from unforget.mia.scoring import audit_signals
from unforget.mia.verdict import REASON_TEXT, decide

RULE = VerdictRule()
N_F, N_H, K = 2000, 10000, 4
REACHABLE = sample_size_check(N_F, N_H, k=K, rule=RULE)


def make_metrics(
    *,
    auc: float = 0.5,
    p_upper: float = 0.5,
    p_lower: float = 0.5,
    tail_upper_p: float = 0.5,
    tail_lower_p: float = 0.5,
    tpr: float = 0.01,
    tpr_high: float = 0.015,
    leaking: tuple[int, ...] = (),
) -> AttackMetrics:
    """Hand-built metrics of one model against exchangeability (0.5, nominal FPR)."""

    def tail(side: Side, p: float) -> TailTest:
        return TailTest(
            side=side, fpr=0.01, threshold=0.0, observed=20, expected=20.0, p_value=p, n_forget=N_F
        )

    return AttackMetrics(
        attack="rmia",
        n_forget=N_F,
        n_heldout=N_H,
        auc=Estimate(value=auc, low=auc - 0.01, high=auc + 0.01),
        auc_p_upper=p_upper,
        auc_p_lower=p_lower,
        tpr=(
            TprAtFpr(
                fpr=0.01,
                tpr=tpr,
                low=0.0,
                high=tpr_high,
                threshold=1.0,
                resolvable=True,
                detections=round(tpr * N_F),
                n_forget=N_F,
            ),
        ),
        tail_upper=tail("upper", tail_upper_p),
        tail_lower=tail("lower", tail_lower_p),
        fdr_q=0.05,
        n_leaking=len(leaking),
        leaking=leaking,
    )


def make_comparison(
    *,
    auc: float = 0.0,
    auc_half: float = 0.02,
    p_upper: float = 0.5,
    p_lower: float = 0.5,
    tpr: float = 0.0,
    tpr_high: float = 0.01,
    tail_upper_p: float = 0.5,
    tail_lower_p: float = 0.5,
) -> ReferenceComparison:
    """Hand-built target-minus-references differences (only what the rule reads varies)."""
    return ReferenceComparison(
        k=K,
        fpr=0.01,
        n_boot=1000,
        auc_reference=0.5,
        auc_difference=Estimate(value=auc, low=auc - auc_half, high=auc + auc_half),
        auc_p_upper=p_upper,
        auc_p_lower=p_lower,
        tpr_reference=0.01,
        tpr_difference=Estimate(value=tpr, low=min(tpr, 0.0) - 0.01, high=tpr_high),
        tail_p_upper=tail_upper_p,
        lower_tail_difference=Estimate(value=0.0, low=-0.01, high=0.01),
        tail_p_lower=tail_lower_p,
    )


CONTROLS = tuple(make_metrics() for _ in range(K))
DETECTING_ORIGINAL = make_comparison(auc=0.3, p_upper=1e-30, tpr=0.2, tpr_high=0.22)
NO_REFS = sample_size_check(N_F, N_H, k=0, rule=RULE)


def run(target: AttackMetrics, **overrides: object) -> Verdict:
    arguments: dict[str, object] = {
        "target": target,
        "comparison": make_comparison(),
        "controls": CONTROLS,
        "positive_control": DETECTING_ORIGINAL,
        "rule": RULE,
        "sample": REACHABLE,
        "diagnostics": (),
    }
    arguments.update(overrides)
    return decide(**arguments)  # type: ignore[arg-type]


def rel(**kw: float) -> dict[str, object]:
    return {"comparison": make_comparison(**kw)}


# A target that looks leaky against 0.5 (a shift every model shares) but not against the refs.
SHIFTED = make_metrics(auc=0.6, p_upper=1e-12, tail_upper_p=1e-9, tpr=0.06, tpr_high=0.07)

CASES = [
    # id, target, overrides, status, reasons
    ("clean", make_metrics(), {}, "PASS", ()),
    ("leak_auc", make_metrics(), rel(auc=0.06, p_upper=1e-9), "FAIL-LEAK",
     ("auc_test_upper", "auc_above_reference")),
    ("leak_tpr_via_tail", make_metrics(), rel(auc=0.01, tail_upper_p=1e-6, tpr=0.05,
                                             tpr_high=0.06),
     "FAIL-LEAK", ("tail_test_upper", "tpr_above_reference")),
    ("leak_small", make_metrics(), rel(auc=0.015, auc_half=0.01, p_upper=1e-4), "INCONCLUSIVE",
     ("leak_below_margin",)),
    ("alpha_is_split", make_metrics(), rel(auc=0.1, p_upper=0.007, tail_upper_p=0.007),
     "INCONCLUSIVE", ("auc_interval_too_wide",)),
    ("over", make_metrics(), rel(auc=-0.1, p_lower=1e-9, tail_lower_p=1e-7), "FAIL-OVER",
     ("auc_test_lower", "tail_test_lower", "auc_below_reference")),
    ("over_small", make_metrics(), rel(auc=-0.01, auc_half=0.01, p_lower=1e-4), "INCONCLUSIVE",
     ("over_below_margin",)),
    ("leak_outranks_over", make_metrics(), rel(auc=-0.03, p_lower=1e-4, tail_upper_p=1e-4,
                                              tpr=0.05, tpr_high=0.07), "FAIL-LEAK",
     ("tail_test_upper", "tpr_above_reference")),
    ("shared_shift_does_not_block_a_pass", SHIFTED, {}, "PASS", ()),
    ("shared_shift_does_not_make_a_pass", make_metrics(), rel(auc=0.05, p_upper=1e-6),
     "FAIL-LEAK", ("auc_test_upper", "auc_above_reference")),
    ("no_references", make_metrics(), {"comparison": None, "sample": NO_REFS}, "INCONCLUSIVE",
     ("no_references",)),
    ("leak_without_refs_vs_half", make_metrics(auc=0.56, p_upper=1e-9),
     {"comparison": None, "sample": NO_REFS}, "FAIL-LEAK",
     ("auc_test_upper", "auc_above_reference")),
    ("wide_interval", make_metrics(), rel(auc_half=0.031), "INCONCLUSIVE",
     ("auc_interval_too_wide",)),
    ("tpr_bound", make_metrics(), rel(tpr_high=0.031), "INCONCLUSIVE",
     ("tpr_bound_above_margin",)),
    ("diagnostics", make_metrics(), {"diagnostics": ("reference recipe differs",)},
     "INCONCLUSIVE", ("diagnostics",)),
    ("one_flagged_id_blocks_a_pass", make_metrics(leaking=(7,)), {}, "INCONCLUSIVE",
     ("leaking_samples_flagged",)),
    ("many_flagged_ids_are_a_leak", make_metrics(leaking=(1, 2, 3, 4, 5)), {}, "FAIL-LEAK",
     ("leaking_samples",)),
    ("ids_the_references_flag_too", make_metrics(leaking=(1, 2, 3, 4, 5)),
     {"controls": (make_metrics(leaking=(1, 2, 3)), make_metrics(leaking=(4, 5)))}, "PASS", ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "overrides", "status", "reasons"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rule_table(
    target: AttackMetrics, overrides: dict[str, object], status: str, reasons: tuple[str, ...]
) -> None:
    verdict = run(target, **overrides)
    assert (verdict.status, verdict.reasons) == (status, reasons)
    assert (
        verdict.exit_code == {"PASS": 0, "FAIL-LEAK": 3, "FAIL-OVER": 4, "INCONCLUSIVE": 5}[status]
    )
    assert "not proof of erasure" in verdict.explanation and "rmia" in verdict.explanation
    assert all(r in REASON_TEXT for r in verdict.reasons)


def test_pass_evidence_depends_on_the_positive_control() -> None:
    strong = run(make_metrics())
    weak = run(make_metrics(), positive_control=make_comparison(auc=0.02, p_upper=0.02))
    absent = run(make_metrics(), positive_control=None)
    assert (strong.evidence, weak.evidence, absent.evidence) == ("strong", "weak", "weak")
    assert "Weak evidence" in weak.explanation and "Weak evidence" not in strong.explanation
    assert run(make_metrics(), **rel(auc=0.06, p_upper=1e-9)).evidence == "none"


def test_inconclusive_states_what_the_run_ruled_out() -> None:
    verdict = run(make_metrics(), **rel(auc=0.01, auc_half=0.04, tpr_high=0.02))
    assert verdict.status == "INCONCLUSIVE"
    assert verdict.auc_ruled_out == pytest.approx(0.05)
    assert verdict.tpr_ruled_out == pytest.approx(0.02)
    assert "rules out |AUC_U − AUC_ref| ≥ 0.050" in verdict.explanation


def test_small_forget_set_is_inconclusive_and_says_what_would_help() -> None:
    small = sample_size_check(N_F, N_H, k=K, rule=VerdictRule(delta_auc=0.005))
    verdict = run(make_metrics(), sample=small)
    assert verdict.status == "INCONCLUSIVE" and "forget_set_too_small" in verdict.reasons
    assert REASON_TEXT["forget_set_too_small"] in verdict.explanation
    assert small.advice and small.advice[1:] in verdict.explanation
    with_diagnostic = run(make_metrics(), diagnostics=("recipe mismatch",))
    assert "recipe mismatch" in with_diagnostic.explanation


def test_inconsistent_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="FPR"):
        run(make_metrics(), rule=VerdictRule(fpr=0.001))
    with pytest.raises(ValueError, match="sample sizes"):
        run(make_metrics(), sample=sample_size_check(N_F, 5000, k=K, rule=RULE))
    with pytest.raises(ValueError, match="negative controls"):
        run(make_metrics(), sample=NO_REFS)


# --- end to end from synthetic signals with a shift every model shares -------------------------


@dataclass(frozen=True)
class Sig:
    """Synthetic per-sample signals (the attributes the audit reads)."""

    loss: np.ndarray
    p: np.ndarray
    phi: np.ndarray


def world(n_f: int, n_h: int, *, seed: int, shift: float = 0.6):
    """Per-sample logit = difficulty (F easier by ``shift`` for EVERY model: a shared shift) +
    per-model noise + a membership bonus on F for models that trained on it."""
    rng = np.random.default_rng(seed)
    base = np.r_[rng.normal(2.0 + shift, 1.5, n_f), rng.normal(2.0, 1.5, n_h)]
    member = np.r_[np.ones(n_f), np.zeros(n_h)]

    def model(bonus: float) -> Sig:
        logit = base + rng.normal(0.0, 0.7, n_f + n_h) + bonus * member
        p = 1.0 / (1.0 + np.exp(-logit))
        return Sig(loss=-np.log(p), p=p, phi=logit)

    return model, member.astype(bool)


def synthetic_audit(n_f: int, bonus: float, *, seed: int = 0) -> Verdict:
    model, mask = world(n_f, 3000, seed=seed)
    refs = [model(0.0) for _ in range(K)]
    return audit_signals(
        target=model(bonus),
        original=None,
        references=refs,
        is_forget=mask,
        rule=RULE,
        rng=np.random.default_rng(seed),
        n_boot=200,
    ).verdict


@pytest.mark.parametrize("seed", [0, 1])
def test_retrain_like_target_under_a_shared_shift_does_not_fail(seed: int) -> None:
    """F is easier than H for every model (AUC vs 0.5 is far from 0.5); the retrain-like target
    must not FAIL, and at |F| = 1,200, |H| = 3,000, K = 4 it should PASS."""
    verdict = synthetic_audit(1200, 0.0, seed=seed)
    assert verdict.status == "PASS", verdict.explanation


def test_leaking_target_under_a_shared_shift_fails_leak() -> None:
    verdict = synthetic_audit(1200, 1.0)
    assert verdict.status == "FAIL-LEAK" and verdict.exit_code == 3
    assert "auc_above_reference" in verdict.reasons


def test_small_request_with_a_leak_fails_leak() -> None:
    """|F| = 20 is far too small for a PASS, yet a leak is found and reported."""
    verdict = synthetic_audit(20, 3.0)
    assert verdict.status == "FAIL-LEAK", verdict.explanation


def test_small_request_without_a_leak_is_inconclusive_with_power_stated() -> None:
    verdict = synthetic_audit(20, 0.0)
    assert verdict.status == "INCONCLUSIVE" and "forget_set_too_small" in verdict.reasons
    assert verdict.auc_ruled_out is not None and verdict.auc_ruled_out > RULE.delta_auc
    assert f"rules out |AUC_U − AUC_ref| ≥ {verdict.auc_ruled_out:.3f}" in verdict.explanation


# --- sample-size pre-check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_forget", "n_heldout", "k", "reachable", "reasons"),
    [
        (20, 10000, 4, False, ("forget_set_too_small",)),
        (100, 10000, 4, False, ("forget_set_too_small",)),
        (1200, 3000, 4, True, ()),
        (1000, 10000, 4, True, ()),
        (1000, 10000, 0, False, ("no_references",)),
        (1000, 500, 4, False, ("heldout_too_small",)),
        (20, 500, 4, False, ("forget_set_too_small", "heldout_too_small")),
    ],
)
def test_sample_size_check(
    n_forget: int, n_heldout: int, k: int, reachable: bool, reasons: tuple[str, ...]
) -> None:
    check = sample_size_check(n_forget, n_heldout, k=k, rule=RULE)
    assert (check.pass_reachable, check.reasons) == (reachable, reasons)
    assert (check.advice == "") == reachable


def test_sample_size_worked_numbers_and_advice() -> None:
    """|F| = 1,200, |H| = 3,000, K = 4: s = √(1.25·4201/(12·1200·3000)) = 0.01103."""
    check = sample_size_check(1200, 3000, k=4, rule=RULE)
    assert check.auc_half_width == pytest.approx(1.959964 * (1.25 * 4201 / 4.32e7) ** 0.5)
    more_k = sample_size_check(1200, 3000, k=16, rule=RULE)
    assert more_k.auc_half_width < check.auc_half_width
    assert more_k.retrain_pass_rate > check.retrain_pass_rate
    small = sample_size_check(300, 3000, k=4, rule=RULE)
    assert small.advice.startswith("a PASS becomes reachable with |F| ≥ ")
    needed = int(small.advice.split("≥ ")[1].split(" ")[0].replace(",", ""))
    assert sample_size_check(needed, 3000, k=4, rule=RULE).pass_reachable
    assert not sample_size_check(needed - 1, 3000, k=4, rule=RULE).pass_reachable
    assert "K ≥" in sample_size_check(1200, 3000, k=0, rule=RULE).advice


# --- result types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0}, {"delta_auc": 0.5}, {"fpr": 1.0}, {"tpr_margin": 0.01}, {"tpr_margin": 1.5}],
)
def test_verdict_rule_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid verdict rule"):
        VerdictRule(**kwargs)


def test_verdict_rule_is_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULE.alpha = 0.05  # type: ignore[misc]
    with pytest.raises(TypeError):
        VerdictRule(0.05)  # type: ignore[call-arg]


def test_verdict_checks_exit_code_and_evidence() -> None:
    common = {"reasons": (), "min_detectable_auc": None, "explanation": ""}
    with pytest.raises(ValueError, match="exit code"):
        Verdict(status="PASS", exit_code=3, evidence="weak", **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="evidence"):
        Verdict(status="FAIL-LEAK", exit_code=3, evidence="weak", **common)  # type: ignore[arg-type]


def test_scores_are_validated_and_read_only() -> None:
    scores = AttackScores(attack="lira", forget=np.array([1.0, 2.0]), heldout=np.array([0.5]))
    with pytest.raises(ValueError):
        scores.forget[0] = 3.0
    with pytest.raises(ValueError, match="non-finite"):
        AttackScores(attack="lira", forget=np.array([np.inf]), heldout=np.zeros(1))


def test_as_json_is_rounded_stable_and_keeps_per_sample_data_out() -> None:
    target = dataclasses.replace(
        make_metrics(auc=0.123456789, p_upper=3.14159265e-15), leaking=(3, 5), n_leaking=2
    )
    data = as_json(target)
    assert data["auc"]["value"] == 0.123457 and data["auc_p_upper"] == 3.14159e-15
    assert "leaking" not in data and "conformal_p" not in data and data["n_leaking"] == 2
    assert json.dumps(as_json(target)) == json.dumps(data)
    assert as_json(RULE) == {"alpha": 0.01, "delta_auc": 0.03, "tpr_margin": 0.03, "fpr": 0.01}
    assert as_json(Estimate(value=float("nan"), low=0.0, high=1.0))["value"] is None
    with pytest.raises(TypeError, match="ndarray"):
        as_json(np.zeros(2))


def test_same_seed_gives_byte_identical_json() -> None:
    first = json.dumps(as_json(synthetic_audit(300, 0.3, seed=3)))
    assert first == json.dumps(as_json(synthetic_audit(300, 0.3, seed=3)))
