"""Plain functions shared by the gradient methods: batch pairing, guard rails, quick checks."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from unforget.device import Precision
from unforget.errors import GuardRailError
from unforget.loaders import Batch, to_device
from unforget.methods.base import GuardConfig, Loader


def cycle(loader: Loader) -> Iterator[Batch]:
    """Endless batches: the loader is restarted (and re-shuffled) whenever it is exhausted."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            return


def paired(forget: Loader, retain: Loader, *, steps: int) -> Iterator[tuple[Batch, Batch]]:
    """``steps`` pairs: each forget batch with the next retain batch (both cycled), as in ∇τ."""
    forget_it, retain_it = cycle(forget), cycle(retain)
    for _ in range(steps):
        yield next(forget_it), next(retain_it)


def device_batch(batch: Batch, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = to_device(batch, precision.device)
    return x, y


@torch.no_grad()
def accuracy(model: nn.Module, loader: Loader, precision: Precision) -> float:
    """Accuracy of ``model`` in eval mode over ``loader`` (restores the previous mode)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        x, y = device_batch(batch, precision)
        with precision.autocast():
            correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def mean_loss(model: nn.Module, loader: Loader, precision: Precision) -> float:
    """Mean cross-entropy of ``model`` in eval mode over ``loader``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        x, y = device_batch(batch, precision)
        with precision.autocast():
            logits = model(x).float()
        total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        count += len(y)
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class Guard:
    """Last-good snapshots and the retain-accuracy floor (see :class:`GuardConfig`)."""

    model: nn.Module
    loader: Loader
    precision: Precision
    config: GuardConfig
    baseline: float = float("nan")
    snapshot: dict[str, torch.Tensor] | None = None

    def start(self) -> float:
        self.baseline = accuracy(self.model, self.loader, self.precision)
        self.snapshot = copy.deepcopy(self.model.state_dict())
        return self.baseline

    def check_loss(self, value: float, *, step: int, method: str) -> None:
        """Non-finite loss: restore the last good weights and stop the run."""
        if not math.isfinite(value):
            self.restore()
            raise GuardRailError(
                f"{method}: loss became {value} at step {step}; the run was "
                "stopped and nothing was written (try a lower lr)"
            )

    def check(self, *, step: int, method: str) -> float:
        """Every ``check_every`` steps: accuracy floor, then take a new snapshot."""
        if step % self.config.check_every:
            return float("nan")
        current = accuracy(self.model, self.loader, self.precision)
        if current < self.baseline - self.config.max_retain_drop:
            self.restore()
            raise GuardRailError(
                f"{method}: retain accuracy collapsed from {self.baseline:.1%} to {current:.1%} "
                f"at step {step} (floor {self.config.max_retain_drop:.0%} below start); the run "
                "was stopped and nothing was written (lower lr or raise guard.max_retain_drop)"
            )
        self.snapshot = copy.deepcopy(self.model.state_dict())
        return current

    def restore(self) -> None:
        if self.snapshot is not None:
            self.model.load_state_dict(self.snapshot)


def freeze_batchnorm(model: nn.Module) -> None:
    """Eval mode everywhere: frozen BatchNorm statistics and no dropout (as the ∇τ and PGU
    authors run unlearning); gradients still flow to all parameters."""
    model.eval()


def weights_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)
