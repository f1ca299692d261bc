"""Typed results of the membership-inference audit.

Conventions, written once here and assumed by every function in ``unforget.mia``:

* **Higher score = more member-like.** Every attack returns per-sample scores oriented so that a
  training member is expected to score higher than a non-member (loss attacks negate the loss).
* "Positive" samples are the forget set F, "negative" samples the held-out set H (never trained on
  by any model involved). Under the retrain-from-scratch ideal, F and H are exchangeable.
* AUC is P(score_F > score_H) + ½·P(tie): 0.5 = indistinguishable, > 0.5 = F looks like members
  (leak), < 0.5 = F looks *less* member-like than never-seen data (over-forgetting).
* Intervals are two-sided 95% unless a docstring says otherwise; p-values are one-sided in the
  direction their name gives ("upper" = F more member-like than H, "lower" = less).
* Indices into F refer to the order in which the caller passed the forget scores.

Results are frozen, keyword-only dataclasses; :func:`as_json` turns any of them into a JSON-ready
object in one place, so the report layer never hand-builds string-keyed dicts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Side = Literal["upper", "lower"]
Status = Literal["PASS", "FAIL-LEAK", "FAIL-OVER", "INCONCLUSIVE"]
Evidence = Literal["strong", "weak", "none"]

# Stable exit codes of `unforget audit` (DESIGN.md section 2).
EXIT_CODES: dict[Status, int] = {"PASS": 0, "FAIL-LEAK": 3, "FAIL-OVER": 4, "INCONCLUSIVE": 5}

# Field metadata marking per-sample data that must not leave the user's machine via --json.
PER_SAMPLE: dict[str, bool] = {"json": False}


def as_score_array(values: npt.ArrayLike, *, name: str) -> npt.NDArray[np.float64]:
    """Copy ``values`` to a read-only 1-D float64 array; ValueError if empty or non-finite."""
    array = np.array(values, dtype=np.float64)  # a private copy
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(array)))} non-finite values")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class AttackScores:
    """Per-sample membership scores of one model under one attack.

    Higher score = more member-like (the module-wide convention). The arrays are copied to
    read-only float64 on construction, so a result can never change after it is computed.

    Attributes:
        attack: name of the attack that produced the scores (e.g. ``"rmia"``, ``"lira"``).
        forget: scores of the forget samples F, shape ``(n_F,)``, finite.
        heldout: scores of the held-out samples H, shape ``(n_H,)``, finite.
    """

    attack: str
    forget: npt.NDArray[np.float64]
    heldout: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        object.__setattr__(self, "forget", as_score_array(self.forget, name="forget scores"))
        object.__setattr__(self, "heldout", as_score_array(self.heldout, name="held-out scores"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    """A point estimate with its two-sided interval (95% unless stated by the producer)."""

    value: float
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"interval low {self.low} exceeds high {self.high}")


@dataclass(frozen=True, kw_only=True, slots=True)
class TprAtFpr:
    """True-positive rate of the attack at a false-positive rate fixed on the held-out set.

    The threshold is set on H so that at most ``fpr`` of H scores lie strictly above it; TPR is
    the share of F strictly above it. ``low``/``high`` is the Clopper-Pearson 95% interval of the
    TPR over F. ``resolvable`` is False when ``n_heldout * fpr < 10``: fewer than ten held-out
    samples define the tail, so the threshold itself is too noisy to read the TPR at that FPR.
    """

    fpr: float
    tpr: float
    low: float
    high: float
    threshold: float
    resolvable: bool
    detections: int
    n_forget: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TailTest:
    """Exact test for an excess of forget samples in one tail of the held-out distribution.

    ``side="upper"``: F samples strictly above the held-out threshold that at most ``fpr`` of H
    exceed (leak direction). ``side="lower"``: F samples strictly below the threshold that at most
    ``fpr`` of H fall below (over-forgetting direction). ``expected`` is the null mean of
    ``observed`` under exchangeability of F and H; ``p_value`` is P(count >= observed) under it.
    """

    side: Side
    fpr: float
    threshold: float
    observed: int
    expected: float
    p_value: float
    n_forget: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AttackMetrics:
    """Every metric of one model under one attack, forget set F against held-out set H.

    Attributes:
        attack: attack name the scores came from.
        n_forget, n_heldout: sample sizes |F| and |H|.
        auc: AUC of F vs H with its stratified-bootstrap 95% interval.
        auc_p_upper, auc_p_lower: one-sided Mann-Whitney p-values of AUC > 0.5 and AUC < 0.5.
        tpr: TPR at each requested FPR, in the order requested.
        tail_upper, tail_lower: exact tail tests at the rule's FPR.
        fdr_q: Benjamini-Hochberg level used to flag leaking samples.
        n_leaking: number of forget samples flagged by BH on their conformal p-values.
        leaking: indices into F of the flagged samples (per-sample, kept out of JSON and eq).
        conformal_p: per-sample conformal p-values of F against H (kept out of JSON and eq).
    """

    attack: str
    n_forget: int
    n_heldout: int
    auc: Estimate
    auc_p_upper: float
    auc_p_lower: float
    tpr: tuple[TprAtFpr, ...]
    tail_upper: TailTest
    tail_lower: TailTest
    fdr_q: float
    n_leaking: int
    leaking: tuple[int, ...] = field(default=(), compare=False, repr=False, metadata=PER_SAMPLE)
    conformal_p: tuple[float, ...] = field(
        default=(), compare=False, repr=False, metadata=PER_SAMPLE
    )

    def tpr_at(self, fpr: float) -> TprAtFpr:
        """Return the TPR entry at ``fpr``; raise ValueError listing the FPRs available."""
        for entry in self.tpr:
            if math.isclose(entry.fpr, fpr, rel_tol=1e-9, abs_tol=1e-12):
                return entry
        available = ", ".join(f"{entry.fpr:g}" for entry in self.tpr)
        raise ValueError(f"no TPR computed at FPR {fpr:g}; available: {available or 'none'}")


@dataclass(frozen=True, kw_only=True, slots=True)
class VerdictRule:
    """Pre-registered decision rule of the audit (audit.md, "Verdict"); echoed into the JSON.

    Attributes:
        alpha: family-wise level, split evenly between the AUC test and the tail test (α/2 each).
        delta_auc: equivalence margin on AUC_U − AUC_ref (absolute AUC units).
        tpr_margin: margin on the TPR at ``fpr`` (a share, 0.03 = 3%).
        fpr: operating point of the TPR margin and of the tail tests (a share, 0.01 = 1%).
    """

    alpha: float = 0.01
    delta_auc: float = 0.03
    tpr_margin: float = 0.03
    fpr: float = 0.01

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.alpha < 1.0:
            problems.append(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0.0 < self.delta_auc < 0.5:
            problems.append(f"delta_auc must lie in (0, 0.5), got {self.delta_auc}")
        if not 0.0 < self.fpr < 1.0:
            problems.append(f"fpr must lie in (0, 1), got {self.fpr}")
        if not self.fpr < self.tpr_margin <= 1.0:
            problems.append(
                f"tpr_margin must lie in (fpr, 1] = ({self.fpr}, 1], got {self.tpr_margin}: "
                "a margin at or below the FPR cannot be met even by a retrained model"
            )
        if problems:
            raise ValueError("invalid verdict rule: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True, slots=True)
class ReferenceComparison:
    """The target against its negative controls, from a paired bootstrap over F and H.

    Every difference is target minus references (each reference audited as the target against
    the other K−1), so 0 is what an exact retrain is expected to show whatever F and H share;
    positive = the target finds F more member-like than the retrains do (leak direction).

    Attributes:
        k: number of negative controls (references) compared with.
        fpr: operating point of the tail shares. n_boot: bootstrap replicates.
        auc_reference: mean AUC of the controls (AUC_ref).
        auc_difference: AUC_U − AUC_ref with its paired-bootstrap 95% interval.
        auc_p_upper, auc_p_lower: one-sided p-values of AUC_U − AUC_ref > 0 and < 0.
        tpr_reference: the controls' mean share of F above H's upper ``fpr`` tail.
        tpr_difference: TPR_U − TPR_ref at ``fpr`` (upper tail) with its 95% interval.
        tail_p_upper: one-sided p-value of an excess of F in the upper tail over the controls.
        lower_tail_difference: the same for the share of F below H's lower ``fpr`` tail.
        tail_p_lower: one-sided p-value of an excess of F in the lower tail over the controls.
    """

    k: int
    fpr: float
    n_boot: int
    auc_reference: float
    auc_difference: Estimate
    auc_p_upper: float
    auc_p_lower: float
    tpr_reference: float
    tpr_difference: Estimate
    tail_p_upper: float
    lower_tail_difference: Estimate
    tail_p_lower: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleSizeCheck:
    """Whether a PASS is reachable with |F|, |H| and K, predicted before any model is scored.

    Attributes:
        n_forget, n_heldout, k: |F|, |H| and the number of reference models.
        min_detectable_auc_delta: smallest AUC_U − AUC_ref the AUC test detects with 80% power
            (against 0.5 when K < 2, where there are no negative controls).
        auc_half_width: predicted 95% half-width of the interval of AUC_U − AUC_ref for an exact
            retrain; a PASS needs it below ``delta_auc``.
        tpr_upper_bound: predicted upper 95% bound of TPR_U − TPR_ref for an exact retrain; a PASS
            needs it below the TPR margin.
        retrain_pass_rate: predicted share of exact retrains whose AUC interval fits inside ±δ
            (the AUC criterion alone; the calibration script measures the real rate).
        pass_reachable: K ≥ 2, both predictions below their margins and the TPR threshold
            resolvable on H (|H|·FPR ≥ 10).
        reasons: reason codes when not reachable (``no_references``,
            ``forget_set_too_small``, ``heldout_too_small``).
        advice: one line saying what would make a PASS reachable; empty when it is.
    """

    n_forget: int
    n_heldout: int
    k: int
    min_detectable_auc_delta: float
    auc_half_width: float
    tpr_upper_bound: float
    retrain_pass_rate: float
    pass_reachable: bool
    reasons: tuple[str, ...]
    advice: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """Outcome of the audit, its exit code and why.

    ``evidence`` qualifies a PASS only: "strong" when the positive control (the original model)
    shows the attack can see F, "weak" when it did not or was not run; "none" for other statuses.
    ``min_detectable_auc`` is the smallest AUC effect this run's sizes detect with 80% power (from
    :class:`SampleSizeCheck`). ``auc_ruled_out`` and ``tpr_ruled_out`` are what the run itself
    rules out at 95%: |AUC_U − AUC_ref| below the first, TPR_U − TPR_ref below the second (None
    without negative controls). An INCONCLUSIVE states them, so the user knows the power.
    """

    status: Status
    exit_code: int
    reasons: tuple[str, ...]
    evidence: Evidence
    min_detectable_auc: float | None
    explanation: str
    auc_ruled_out: float | None = None
    tpr_ruled_out: float | None = None

    def __post_init__(self) -> None:
        if EXIT_CODES[self.status] != self.exit_code:
            raise ValueError(f"exit code {self.exit_code} does not match status {self.status}")
        if (self.status == "PASS") == (self.evidence == "none"):
            raise ValueError(f"evidence {self.evidence!r} does not fit status {self.status}")


def _round(value: float) -> float | None:
    """Six significant digits: byte-stable JSON that still keeps tiny p-values readable."""
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def as_json(obj: Any) -> Any:
    """Convert a result (dataclass, tuple, scalar) into JSON-ready Python objects.

    Floats are rounded to six significant digits so the JSON is byte-stable across runs and
    platforms; non-finite floats become ``None``. Fields marked :data:`PER_SAMPLE` are left out:
    per-sample indices and p-values stay in the CSV on the user's machine.

    Raises:
        TypeError: for values with no JSON form (e.g. numpy arrays).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: as_json(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("json", True)
        }
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _round(float(obj))
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, tuple | list):
        return [as_json(item) for item in obj]
    raise TypeError(f"no JSON form for {type(obj).__name__}")
