"""Forward passes without gradients: logits per sample, accuracy and loss per split.

Logits are returned in float64 so that downstream signals (``log softmax``, logit-scaled
confidence) keep precision for very confident models, where float32 rounds p to 1.
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
class Outputs:
    """Per-sample model outputs over one loader, in loader order."""

    logits: np.ndarray  # (N, C) float64
    labels: np.ndarray  # (N,) int64
    rows: np.ndarray  # (N,) int64 row positions in the split

    def losses(self) -> np.ndarray:
        """Per-sample cross-entropy ℓ = −log softmax(z)_y, float64."""
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        return log_norm - z[np.arange(len(z)), self.labels]

    def correct(self) -> np.ndarray:
        return self.logits.argmax(axis=1) == self.labels

    def first(self, count: int) -> Outputs:
        """The first ``count`` rows (those a loader cut to its first rows reads)."""
        return Outputs(self.logits[:count], self.labels[:count], self.rows[:count])


@dataclass(frozen=True)
class Score:
    """Accuracy and mean cross-entropy on one set of samples."""

    accuracy: float
    loss: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"accuracy": round(self.accuracy, 6), "loss": round(self.loss, 6), "n": self.n}


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[Batch], *, precision: Precision, augment_hflip: bool = False
) -> Outputs:
    """Run ``model`` in eval mode over ``batches``; restores the previous train/eval mode.

    With ``augment_hflip`` the logits of the identity and the horizontally flipped view are
    averaged (used by the audit when the model was trained with flips).
    """
    was_training = model.training
    model.eval()
    logits, labels, rows = [], [], []
    try:
        for batch in batches:
            x, y, r = to_device(batch, precision.device)
            with precision.autocast():
                z = model(x).double()
                if augment_hflip:
                    z = 0.5 * (z + model(torch.flip(x, dims=[-1])).double())
            logits.append(z.cpu().numpy())
            labels.append(y.cpu().numpy())
            rows.append(r.numpy())
    finally:
        model.train(was_training)
    if not logits:
        return Outputs(np.zeros((0, 0)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Outputs(np.concatenate(logits), np.concatenate(labels), np.concatenate(rows))


def score(outputs: Outputs, mask: np.ndarray | None = None) -> Score:
    """Accuracy and mean loss over all samples, or those where ``mask`` is true."""
    correct, losses = outputs.correct(), outputs.losses()
    if mask is not None:
        correct, losses = correct[mask], losses[mask]
    if len(correct) == 0:
        return Score(accuracy=float("nan"), loss=float("nan"), n=0)
    return Score(accuracy=float(correct.mean()), loss=float(losses.mean()), n=len(correct))
