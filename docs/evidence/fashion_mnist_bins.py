"""Exploratory re-scoring behind docs/evidence/fashion-mnist.md (landing 13, "Why 1 % is hard").

Where, by confidence, does an audited model's interval of AUC_U − AUC_ref get its width? Runs the
project's audit (K = 4 cached references, the original as positive control) on each checkpoint
and keeps every model's signals on the way, then splits the forget rows by the references' mean
logit-scaled confidence m(x) = mean_k φ_k(x) and reports per bin:

- φ_U − m on F and on H: how far the audited model sits from the references on forget rows and
  on held-out rows of the same confidence (a model that lowered its confidence everywhere has
  both far below 0);
- the mean of V_U(x) − V_ref(x), the forget row's placement among H under the audited model
  minus its mean placement under each reference (each scored against the other three, as the
  audit's negative controls are), and that bin's share of Σ (V_U − V_ref − mean)², the forget
  side of the paired bootstrap's variance. A retrain has every bin near 0; bins of opposite
  sign cancel in AUC_U − AUC_ref but widen its interval.

    python docs/evidence/fashion_mnist_bins.py OUT random1 OUT/random1/seed0/retrain.safetensors \\
        OUT/random1/seed0/proxy-distill.safetensors

OUT is a ``scripts/evaluate_default.py --data fashion-mnist`` folder (its original, manifests and
cached references: run with the same ``UNFORGET_CACHE``).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

import unforget.workflows.audit as audit
from unforget.mia import attacks
from unforget.mia.scoring import model_scores
from unforget.mia.signals import Signals
from unforget.runtime.device import precision_for, resolve_device

BINS = (-np.inf, 0.0, 2.0, 4.0, 6.0, 8.0, np.inf)
out, setting = Path(sys.argv[1]), sys.argv[2]
seen: list[Signals] = []
measure = audit._signals


def keep(*args: Any) -> Signals:
    """The audit's own signals of each model it scores: target, original, references."""
    seen.append(measure(*args))
    return seen[-1]


audit._signals = keep  # type: ignore[assignment]


def placements(scores: np.ndarray, is_forget: np.ndarray) -> np.ndarray:
    """Each forget row's share of held-out scores below it (ties count half)."""
    h = np.sort(scores[~is_forget])
    f = scores[is_forget]
    return (np.searchsorted(h, f, "left") + np.searchsorted(h, f, "right")) / (2 * len(h))


for ckpt in sys.argv[3:]:
    seen.clear()
    report = audit.run_audit(
        audit.AuditRequest(
            ckpt=Path(ckpt),
            manifest=out / f"forget_{setting.replace(':', '-')}.txt",
            original=out / "original.safetensors",
            refs=4,
        ),
        precision=precision_for(resolve_device("cpu")),
    )
    assert report.per_sample is not None and report.comparison is not None
    is_forget = report.per_sample.is_forget
    target, original, refs = seen[0], seen[1], seen[2:]
    a = attacks.tune_rmia_a(original.p, np.stack([r.p for r in refs]), is_forget=is_forget)
    others = [[r for j, r in enumerate(refs) if j != i] for i in range(len(refs))]
    v_ref = np.mean(
        [
            placements(model_scores("rmia", r, o, a=a), is_forget)
            for r, o in zip(refs, others, strict=True)
        ],
        0,
    )
    v_u = np.mean([placements(model_scores("rmia", target, o, a=a), is_forget) for o in others], 0)
    diff = v_u - v_ref
    m = np.mean([r.phi for r in refs], 0)
    residual = target.phi - m
    spread = (diff - diff.mean()) ** 2
    d = report.comparison.auc_difference
    interval = f"{d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
    print(f"{ckpt}: {report.verdict.status}, AUC_U − AUC_ref {interval}")
    print("  m(x) bin   n_F   φ_U−m on F   φ_U−m on H   V_U−V_ref   share of variance")
    for lo, hi in itertools.pairwise(BINS):
        f_bin = is_forget & (m >= lo) & (m < hi)
        h_bin = ~is_forget & (m >= lo) & (m < hi)
        in_f = f_bin[is_forget]
        print(
            f"  [{lo:g}, {hi:g})".ljust(13)
            + f"{in_f.sum():5d}   {residual[f_bin].mean():+9.2f}   {residual[h_bin].mean():+9.2f}"
            + f"   {diff[in_f].mean():+9.3f}   {spread[in_f].sum() / spread.sum():9.2f}"
        )
