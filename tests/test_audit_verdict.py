"""The verdict rule, its sample-size pre-check and the result types, branch by branch.

Rule under test (audit.md, "Verdict"), α = 0.01 split as α/2 = 0.005 per kind of test:
FAIL-LEAK = an upper test rejects AND (AUC_U − AUC_ref ≥ δ OR TPR@1% ≥ 3%); FAIL-OVER = a lower
test rejects AND AUC_ref − AUC_U ≥ δ; PASS = nothing rejects, the AUC-difference interval is inside
±δ, the TPR upper bound is below 3%, references used, no diagnostics; else INCONCLUSIVE.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from unforget.audit import metrics
from unforget.audit.results import (
    AttackMetrics,
    AttackScores,
    Estimate,
    Side,
    TailTest,
    TprAtFpr,
    Verdict,
    VerdictRule,
    as_json,
)
from unforget.audit.verdict import REASON_TEXT, decide, sample_size_check

RULE = VerdictRule()
N_F, N_H = 2000, 10000
REACHABLE = sample_size_check(N_F, N_H, RULE)


def make_metrics(
    *,
    auc: float = 0.5,
    p_upper: float = 0.5,
    p_lower: float = 0.5,
    tail_upper_p: float = 0.5,
    tail_lower_p: float = 0.5,
    tpr: float = 0.01,
    tpr_high: float = 0.015,
) -> AttackMetrics:
    """Hand-built metrics: only the numbers the rule reads vary."""

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
        n_leaking=0,
    )


REFS = (make_metrics(auc=0.50), make_metrics(auc=0.50))
INSIDE = Estimate(value=0.0, low=-0.02, high=0.02)
DETECTING_ORIGINAL = make_metrics(auc=0.8, p_upper=1e-30, tpr=0.2, tpr_high=0.22)


def run(target: AttackMetrics, **overrides: object) -> Verdict:
    arguments: dict[str, object] = {
        "target": target,
        "references": REFS,
        "positive_control": DETECTING_ORIGINAL,
        "auc_diff": INSIDE,
        "rule": RULE,
        "sample": REACHABLE,
        "diagnostics": (),
    }
    arguments.update(overrides)
    return decide(**arguments)  # type: ignore[arg-type]


CASES = [
    # id, target, overrides, status, reasons
    ("clean", make_metrics(), {}, "PASS", ()),
    ("leak_auc", make_metrics(auc=0.6, p_upper=1e-9), {}, "FAIL-LEAK",
     ("auc_test_upper", "auc_above_reference")),
    ("leak_tpr_via_tail", make_metrics(auc=0.51, tail_upper_p=1e-6, tpr=0.05, tpr_high=0.06), {},
     "FAIL-LEAK", ("tail_test_upper", "tpr_above_margin")),
    ("leak_small", make_metrics(auc=0.515, p_upper=1e-4, tpr=0.02, tpr_high=0.025), {},
     "INCONCLUSIVE", ("leak_below_margin",)),
    ("alpha_is_split", make_metrics(auc=0.6, p_upper=0.007, tail_upper_p=0.007),
     {"auc_diff": Estimate(value=0.1, low=0.08, high=0.12)}, "INCONCLUSIVE",
     ("auc_interval_too_wide",)),
    ("over", make_metrics(auc=0.4, p_lower=1e-9, tail_lower_p=1e-7), {}, "FAIL-OVER",
     ("auc_test_lower", "tail_test_lower", "auc_below_reference")),
    ("over_small", make_metrics(auc=0.49, p_lower=1e-4), {}, "INCONCLUSIVE",
     ("over_below_margin",)),
    ("leak_outranks_over", make_metrics(auc=0.47, p_lower=1e-4, tail_upper_p=1e-4, tpr=0.06,
                                        tpr_high=0.07), {}, "FAIL-LEAK",
     ("tail_test_upper", "tpr_above_margin")),
    ("no_references", make_metrics(), {"references": None}, "INCONCLUSIVE", ("no_references",)),
    ("empty_references", make_metrics(), {"references": ()}, "INCONCLUSIVE", ("no_references",)),
    ("leak_without_refs_vs_half", make_metrics(auc=0.56, p_upper=1e-9), {"references": None},
     "FAIL-LEAK", ("auc_test_upper", "auc_above_reference")),
    ("refs_explain_the_gap", make_metrics(auc=0.56, p_upper=1e-9),
     {"references": (make_metrics(auc=0.55), make_metrics(auc=0.55))}, "INCONCLUSIVE",
     ("leak_below_margin",)),
    ("no_interval", make_metrics(), {"auc_diff": None}, "INCONCLUSIVE", ("no_auc_interval",)),
    ("wide_interval", make_metrics(), {"auc_diff": Estimate(value=0.0, low=-0.04, high=0.02)},
     "INCONCLUSIVE", ("auc_interval_too_wide",)),
    ("tpr_bound", make_metrics(tpr_high=0.031), {}, "INCONCLUSIVE", ("tpr_bound_above_margin",)),
    ("diagnostics", make_metrics(), {"diagnostics": ("reference recipe differs",)},
     "INCONCLUSIVE", ("diagnostics",)),
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
    assert verdict.min_detectable_auc == REACHABLE.min_detectable_auc_delta


def test_pass_evidence_depends_on_the_positive_control() -> None:
    strong = run(make_metrics())
    weak = run(make_metrics(), positive_control=make_metrics(auc=0.52, p_upper=0.02))
    absent = run(make_metrics(), positive_control=None)
    assert (strong.evidence, weak.evidence, absent.evidence) == ("strong", "weak", "weak")
    assert "Weak evidence" in weak.explanation and "Weak evidence" not in strong.explanation
    assert run(make_metrics(auc=0.6, p_upper=1e-9)).evidence == "none"


def test_small_forget_set_is_inconclusive_and_explained() -> None:
    small = sample_size_check(N_F, N_H, VerdictRule(delta_auc=0.01))
    verdict = run(make_metrics(), sample=small)
    assert verdict.status == "INCONCLUSIVE" and "forget_set_too_small" in verdict.reasons
    assert REASON_TEXT["forget_set_too_small"] in verdict.explanation
    with_diagnostic = run(make_metrics(), diagnostics=("recipe mismatch",))
    assert "recipe mismatch" in with_diagnostic.explanation


def test_inconsistent_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="FPR"):
        run(make_metrics(), rule=VerdictRule(fpr=0.001))
    with pytest.raises(ValueError, match="sample sizes"):
        run(make_metrics(), sample=sample_size_check(N_F, 5000, RULE))


# --- end to end from synthetic scores ---------------------------------------------------------


def audit(shift: float, *, references: bool, seed: int = 0) -> Verdict:
    """Score-level audit: F ~ N(shift, 1) vs H ~ N(0, 1); references are exchangeable draws."""
    rng = np.random.default_rng(seed)
    scores = AttackScores(
        attack="rmia", forget=rng.normal(shift, 1, N_F), heldout=rng.normal(0, 1, N_H)
    )
    target = metrics.attack_metrics(scores, rng=rng, n_boot=300)
    refs = tuple(
        metrics.attack_metrics(
            AttackScores(attack="rmia", forget=rng.normal(size=N_F), heldout=rng.normal(size=N_H)),
            rng=rng,
            n_boot=50,
        )
        for _ in range(4)
    )
    diff = metrics.auc_difference_interval(
        scores.forget, scores.heldout, reference_aucs=[r.auc.value for r in refs], rng=rng
    )
    return decide(
        target=target,
        references=refs if references else None,
        positive_control=None,
        auc_diff=diff if references else None,
        rule=RULE,
        sample=REACHABLE,
    )


@pytest.mark.parametrize(
    ("shift", "references", "status"),
    [(1.0, True, "FAIL-LEAK"), (-1.0, True, "FAIL-OVER"), (0.0, True, "PASS"),
     (0.0, False, "INCONCLUSIVE")],
)  # fmt: skip
def test_end_to_end_from_scores(shift: float, references: bool, status: str) -> None:
    verdict = audit(shift, references=references)
    assert verdict.status == status
    if status == "PASS":
        assert verdict.evidence == "weak"  # no positive control was given
    if not references:
        assert verdict.reasons == ("no_references",)


# --- sample-size pre-check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_forget", "n_heldout", "reachable", "reasons"),
    [
        (20, 10000, False, ("forget_set_too_small",)),
        (100, 10000, False, ("forget_set_too_small",)),
        (1000, 10000, True, ()),
        (1000, 500, False, ("heldout_too_small",)),
        (20, 500, False, ("forget_set_too_small", "heldout_too_small")),
    ],
)
def test_sample_size_calibration(
    n_forget: int, n_heldout: int, reachable: bool, reasons: tuple[str, ...]
) -> None:
    check = sample_size_check(n_forget, n_heldout, RULE)
    assert (check.pass_reachable, check.reasons) == (reachable, reasons)


def test_sample_size_worked_numbers() -> None:
    """|F| = 100: 1 detection at 1% FPR has CP upper bound 0.0545 ≥ 3%; |F| = 1000: 10 → 0.0183."""
    assert sample_size_check(100, 10000, RULE).tpr_upper_bound == pytest.approx(0.05446, abs=1e-4)
    check = sample_size_check(1000, 10000, RULE)
    assert check.tpr_upper_bound == pytest.approx(0.01831, abs=1e-4)
    assert check.auc_half_width == pytest.approx(1.959964 * (11001 / 12e7) ** 0.5, rel=1e-6)
    sizes = (100, 1000, 10000)
    detectable = [sample_size_check(n, 10000, RULE).min_detectable_auc_delta for n in sizes]
    assert detectable == sorted(detectable, reverse=True)


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
    first = json.dumps(as_json(audit(0.3, references=True, seed=3)))
    assert first == json.dumps(as_json(audit(0.3, references=True, seed=3)))
