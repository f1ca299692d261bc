"""Signals of every model → scores → metrics → verdict, in numpy (no torch, no files).

This is the audit's whole statistical path after the models have been queried, so the CLI
pipeline and the calibration script (``scripts/calibrate_audit.py``) run exactly the same code:
the script caches each model's signals once and audits many target/reference combinations.

Roles (audit.md): the target θ_U; the original θ_O (positive control, optional); K references
trained without F (OUT for F and H). With K ≥ 2 each reference i is audited as a target against
the other K−1 (negative control i), and the target is also scored against those same K−1, so the
pair (target, control i) is scored alike; :mod:`unforget.mia.comparison` compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from unforget.mia import attacks, metrics
from unforget.mia.comparison import compare_with_references
from unforget.mia.power import sample_size_check
from unforget.mia.results import (
    AttackMetrics,
    AttackScores,
    ReferenceComparison,
    SampleSizeCheck,
    Verdict,
    VerdictRule,
)
from unforget.mia.verdict import decide

FloatArray = npt.NDArray[np.float64]
FPRS = (0.01, 0.001)  # TPR is reported at each; the rule reads ``VerdictRule.fpr``


class ModelSignals(Protocol):
    """Per-sample signals of one model over F then H (see :mod:`unforget.mia.signals`)."""

    @property
    def loss(self) -> FloatArray: ...
    @property
    def p(self) -> FloatArray: ...
    @property
    def phi(self) -> FloatArray: ...


@dataclass(frozen=True, kw_only=True)
class ScoredAudit:
    """Everything the verdict was computed from. Higher score = more member-like.

    Attributes:
        attack: the pre-registered primary attack for K. k: number of references.
        rmia_a: RMIA's offline constant (tuned on the original when given).
        target, original: metrics of θ_U (scored against all K references) and θ_O.
        controls: metrics of each reference audited against the other K−1 (empty when K < 2).
        comparison: θ_U against the controls; positive_comparison: θ_O against them.
        sample: the pre-check for these sizes and K. verdict: the decision.
        target_scores: θ_U's scores over F then H (per-sample, for the CSV and the ROC).
        roc_scores: scores of each model for the ROC plot, by name.
    """

    attack: attacks.AttackName
    k: int
    rmia_a: float
    target: AttackMetrics
    original: AttackMetrics | None
    controls: tuple[AttackMetrics, ...]
    comparison: ReferenceComparison | None
    positive_comparison: ReferenceComparison | None
    sample: SampleSizeCheck
    verdict: Verdict
    target_scores: FloatArray = field(repr=False)
    roc_scores: dict[str, FloatArray] = field(default_factory=dict, repr=False)


def model_scores(
    attack: attacks.AttackName,
    model: ModelSignals,
    references: Sequence[ModelSignals],
    *,
    a: float,
) -> FloatArray:
    """Scores of ``model`` under ``attack`` against ``references`` (higher = more member-like)."""
    if attack == "rmia":
        return attacks.rmia_offline(model.p, np.stack([r.p for r in references]), a=a)
    if attack == "lira":
        return attacks.lira_offline(model.phi, np.stack([r.phi for r in references]))
    return attacks.loss_attack_scores(model.loss)


def audit_signals(
    *,
    target: ModelSignals,
    original: ModelSignals | None,
    references: Sequence[ModelSignals],
    is_forget: npt.NDArray[np.bool_],
    rule: VerdictRule,
    rng: np.random.Generator,
    n_boot: int = 1000,
    diagnostics: tuple[str, ...] = (),
) -> ScoredAudit:
    """Audit from signals: attack by K, metrics of every model, comparison, verdict.

    Args:
        target, original, references: signals over the same samples, F and H in any order.
        is_forget: mask over those samples, True for F. rule: the verdict rule.
        rng: the only randomness (bootstrap, RMIA needs none). n_boot: bootstrap replicates.
        diagnostics: upstream problems; any blocks a PASS.

    Returns:
        :class:`ScoredAudit`.
    """
    mask = np.asarray(is_forget, dtype=bool)
    k = len(references)
    attack = attacks.primary_attack_name(k)
    a = attacks.RMIA_DEFAULT_A
    if attack == "rmia":
        p_refs = np.stack([r.p for r in references])
        a = attacks.tune_rmia_a(original.p if original else None, p_refs, is_forget=mask)

    def split(s: FloatArray) -> AttackScores:
        return AttackScores(attack=attack, forget=s[mask], heldout=s[~mask])

    def measured(s: FloatArray) -> AttackMetrics:
        return metrics.attack_metrics(
            split(s), rng=rng, fprs=FPRS, tail_fpr=rule.fpr, n_boot=n_boot
        )

    t_scores = model_scores(attack, target, references, a=a)
    roc = {"target": t_scores}
    target_m = measured(t_scores)
    original_m = None
    if original is not None:
        roc["original"] = model_scores(attack, original, references, a=a)
        original_m = measured(roc["original"])
    controls: tuple[AttackMetrics, ...] = ()
    comparison = positive = None
    if k >= 2:
        others = [[r for j, r in enumerate(references) if j != i] for i in range(k)]
        c_scores = [model_scores(attack, references[i], others[i], a=a) for i in range(k)]
        roc.update({f"reference {i + 1}": s for i, s in enumerate(c_scores)})
        controls = tuple(measured(s) for s in c_scores)
        null = [split(s) for s in c_scores]
        comparison = compare_with_references(
            [split(model_scores(attack, target, o, a=a)) for o in others],
            null,
            fpr=rule.fpr,
            rng=rng,
            n_boot=n_boot,
        )
        if original is not None:
            positive = compare_with_references(
                [split(model_scores(attack, original, o, a=a)) for o in others],
                null,
                fpr=rule.fpr,
                rng=rng,
                n_boot=n_boot,
            )
    sample = sample_size_check(int(mask.sum()), int((~mask).sum()), k=k, rule=rule)
    verdict = decide(
        target=target_m,
        comparison=comparison,
        controls=controls,
        positive_control=positive,
        rule=rule,
        sample=sample,
        diagnostics=diagnostics,
    )
    return ScoredAudit(
        attack=attack,
        k=k,
        rmia_a=a,
        target=target_m,
        original=original_m,
        controls=controls,
        comparison=comparison,
        positive_comparison=positive,
        sample=sample,
        verdict=verdict,
        target_scores=t_scores,
        roc_scores=roc,
    )
