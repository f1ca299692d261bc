"""Per-sample membership signals from a model (torch side of the audit pipeline).

For each sample, from float64 logits z (audit.md, "Signals"):

- loss ℓ = −log softmax(z)_y,
- true-class probability p = softmax(z)_y,
- logit-scaled confidence φ = z_y − logsumexp_{j≠y} z_j, the numerically stable form of
  log(p / (1 − p)) used by LiRA (Carlini et al., S&P 2022, Section IV).

If the model was trained with horizontal flips, the flipped view is queried too and the per-view
statistics are averaged, since a member's memorisation shows in both views.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unforget.data.loaders import Batch, to_device
from unforget.runtime.device import Precision


@dataclass(frozen=True)
class Signals:
    """Signals of one model over a fixed list of samples (all arrays (N,), float64)."""

    loss: np.ndarray
    p: np.ndarray
    phi: np.ndarray
    correct: np.ndarray  # bool, argmax == label (identity view)

    def take(self, index: np.ndarray) -> Signals:
        return Signals(self.loss[index], self.p[index], self.phi[index], self.correct[index])

    @staticmethod
    def concat(parts: Iterable[Signals]) -> Signals:
        parts = list(parts)
        return Signals(
            *(
                np.concatenate([getattr(s, f) for s in parts])
                for f in ("loss", "p", "phi", "correct")
            )
        )


def from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(loss, p, φ) per sample from (N, C) logits, computed in float64."""
    z = logits.double()
    log_probs = torch.log_softmax(z, dim=1)
    true = log_probs.gather(1, labels[:, None]).squeeze(1)
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], float("-inf"))
    phi = z_y - torch.logsumexp(others, dim=1)
    return -true, true.exp(), phi


@torch.no_grad()
def compute_signals(
    model: nn.Module, batches: Iterable[Batch], *, precision: Precision, hflip: bool = False
) -> Signals:
    """Signals of ``model`` (eval mode) over ``batches``, in loader order."""
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"loss": [], "p": [], "phi": [], "correct": []}
    try:
        for batch in batches:
            x, y, _ = to_device(batch, precision.device)
            views = [x, torch.flip(x, dims=[-1])] if hflip and x.dim() == 4 else [x]
            stats = []
            for i, view in enumerate(views):
                with precision.autocast():
                    logits = model(view)
                if i == 0:
                    out["correct"].append((logits.argmax(1) == y).cpu().numpy())
                stats.append(from_logits(logits, y))
            for name, index in (("loss", 0), ("p", 1), ("phi", 2)):
                mean = torch.stack([s[index] for s in stats]).mean(0)
                out[name].append(mean.cpu().numpy())
    finally:
        model.train(was_training)
    return Signals(
        *(
            np.concatenate(out[k]) if out[k] else np.zeros(0)
            for k in ("loss", "p", "phi", "correct")
        )
    )
