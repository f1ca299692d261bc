"""Exploratory re-scoring behind docs/evidence/fashion-mnist.md ("Verdict at 10 %").

Where does proxy-distill's excess in the 1 % tail come from? RMIA (a = 0.3) with the other two
retrain seeds as references (not the audit itself: no K = 4 cached references, no tuned a).
Run after ``scripts/evaluate_default.py --data fashion-mnist --out OUT`` (3 seeds):

    python docs/evidence/fashion_mnist_tail.py OUT random10

m_out = mean true-class probability of the two other retrains; target = the audited model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from unforget.io.manifest import read_manifest
from unforget.mia import attacks
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows.bench import _signals
from unforget.workflows.workspace import open_workspace

out, setting = Path(sys.argv[1]), sys.argv[2]
prec = precision_for(resolve_device("cpu"))
ws = open_workspace(out / "original.safetensors")
forget = ws.forget_rows(read_manifest(out / f"forget_{setting.replace(':', '-')}.txt"))
test = ws.evidence_rows()
nf = len(forget)


def p_of(path: Path) -> np.ndarray:
    """True-class probability on F then on H's evidence rows."""
    m = ws.load_model(path, prec)
    f = _signals(ws, m, ws.train, forget, prec).p
    return np.r_[f, _signals(ws, m, ws.heldout, test, prec).p]


folder = out / setting.replace(":", "-")
retrains = {s: p_of(folder / f"seed{s}" / "retrain.safetensors") for s in (0, 1, 2)}
original = p_of(out / "original.safetensors")[:nf]
for name in ("retrain", "proxy-distill"):
    for s in (0, 1, 2):
        target = p_of(folder / f"seed{s}" / f"{name}.safetensors")
        others = np.stack([retrains[t] for t in (0, 1, 2) if t != s])
        score = attacks.rmia_offline(target, others, a=0.3)
        tail = score[:nf] > np.quantile(score[nf:], 0.99)
        m_out = others.mean(0)[:nf]
        print(
            f"{name} seed{s}: {tail.sum()} of {nf} forget rows in H's top 1 %; medians over them: "
            f"m_out {np.median(m_out[tail]):.3f}, target p {np.median(target[:nf][tail]):.3f}, "
            f"original p {np.median(original[tail]):.3f} (all F: m_out {np.median(m_out):.3f})"
        )
