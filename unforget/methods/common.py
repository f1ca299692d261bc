"""Plain functions shared by the reference-stopped methods ``pgu``, ``ltu`` and ``lur``: the
per-epoch stop rule against held-out accuracy, the forget-epoch budget, the calibrated
learning rate, and the curvature estimate (power iteration) with its autocast.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unforget.data.loaders import RowSource
from unforget.errors import InputError
from unforget.methods.base import Loader, Outcome, UnlearnTask
from unforget.methods.loop import weights_differ
from unforget.runtime import distributed
from unforget.runtime.device import Precision
from unforget.runtime.distributed import any_rank
from unforget.training.evaluate import predict


@dataclass
class ReferenceStop:
    """Per-epoch stop rule shared by ``pgu``, ``ltu`` and ``lur``: forget accuracy down to what
    held-out data shows.

    After each epoch forget accuracy is compared with a TARGET measured on the held-out
    reference rows under the current model: the reference accuracy of each class, weighted by
    the forget set's class mix, with classes removed whole (no retain rows left) counting 0 —
    a model retrained without a class never predicts it. For random forgetting this is the
    reference accuracy (PGU's rule); for class removal it is 0. Once forget accuracy is at or
    below the target the run stops (``status = "reached"``) and the model keeps whichever of
    the last two epochs is closer to it.

    A safety net of ours: a model that degrades everywhere also satisfies "forget ≤ target".
    So if reference accuracy on the classes that stay has fallen more than ``max_drop`` below
    its start, the run stops (``status = "degraded"``) and the previous epoch is restored: the
    method cannot forget further without costing generalisation. ``history`` rows are
    JSON-ready for the receipt.
    """

    model: nn.Module
    task: UnlearnTask
    max_drop: float
    history: list[dict[str, float]] = field(default_factory=list)
    kept_epoch: int = 0
    status: str = "running"
    removed: tuple[int, ...] = ()
    _previous: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.task.reference is None:
            raise InputError("this method needs held-out reference rows (data.reference_fraction)")
        self._reference: Loader = self.task.reference
        forget = set(loader_labels(self.task.forget_eval).tolist())
        self.removed = tuple(sorted(forget - set(loader_labels(self.task.retain).tolist())))

    def measure(self, epoch: int) -> bool:
        """Record epoch ``epoch`` (0 = before any step); True when the run should stop."""
        precision = self.task.precision
        forget = predict(self.model, self.task.forget_eval, precision=precision)
        reference = predict(self.model, self._reference, precision=precision)
        forget_acc = float(np.mean(forget.logits.argmax(1) == forget.labels))
        target, kept = reference_target(
            forget.labels, reference.logits, reference.labels, removed=self.removed
        )
        # the same rows on every rank; agreed numbers give every rank the same stop and restore
        forget_acc, target, kept = distributed.agreed(forget_acc, target, kept)
        self.history.append(
            {
                "epoch": epoch,
                "forget_accuracy": round(forget_acc, 6),
                "target_accuracy": round(target, 6),
                "reference_accuracy": round(kept, 6),
            }
        )
        if epoch > 0 and kept < self.history[0]["reference_accuracy"] - self.max_drop:
            self.status = "degraded"
        elif forget_acc <= target:
            self.status = "reached"
        restore = self._previous is not None and (
            self.status == "degraded"
            or (self.status == "reached" and self._gap(-2) < self._gap(-1))
        )
        if restore and self._previous is not None:
            self.model.load_state_dict(self._previous)
            self.kept_epoch = epoch - 1
        else:
            self.kept_epoch = epoch
            self._previous = copy.deepcopy(self.model.state_dict())
        return any_rank(self.status != "running")

    def _gap(self, index: int) -> float:
        row = self.history[index]
        return abs(row["forget_accuracy"] - row["target_accuracy"])

    def reason(self) -> str:
        """One line for the receipt: why the run stopped and which epoch was kept."""
        last, kept = self.history[-1], self.history[self.kept_epoch]
        state = (
            f"epoch {last['epoch']}: forget accuracy {last['forget_accuracy']:.1%}, "
            f"target {last['target_accuracy']:.1%}"
        )
        if kept is not last:
            state += (
                f"; kept epoch {kept['epoch']}: {kept['forget_accuracy']:.1%}, "
                f"target {kept['target_accuracy']:.1%}"
            )
        if self.status == "degraded":
            return (
                f"reference accuracy fell more than {self.max_drop:.0%} below its start ({state})"
            )
        if self.status == "running":
            return f"epoch budget spent ({state})"
        if len(self.history) == 1:
            return f"forget accuracy already at the held-out level ({state})"
        return f"forget accuracy reached the held-out level ({state})"


def reference_target(
    forget_labels: np.ndarray,
    reference_logits: np.ndarray,
    reference_labels: np.ndarray,
    *,
    removed: tuple[int, ...],
) -> tuple[float, float]:
    """``(target, kept)``: the forget-class-weighted reference accuracy with removed classes
    at 0, and the reference accuracy over the classes that stay.

    A forget class absent from the reference rows takes the overall reference accuracy.
    """
    correct = reference_logits.argmax(1) == reference_labels
    overall = float(correct.mean()) if len(correct) else 0.0
    classes, counts = np.unique(forget_labels, return_counts=True)
    target = 0.0
    for c, n in zip(classes.tolist(), counts.tolist(), strict=True):
        rows = reference_labels == c
        per_class = float(correct[rows].mean()) if rows.any() else overall
        target += n / max(len(forget_labels), 1) * (0.0 if c in removed else per_class)
    stays = ~np.isin(reference_labels, removed)
    kept = float(correct[stays].mean()) if stays.any() else overall
    return target, kept


def loader_labels(loader: Loader) -> np.ndarray:
    """All labels a loader yields: read from the split for a :class:`RowSource` (no inputs
    are loaded), otherwise by iterating it."""
    dataset = loader.dataset
    if isinstance(dataset, RowSource):
        return np.asarray(dataset.split.labels)[dataset.rows]
    return np.concatenate([np.asarray(batch[1]) for batch in loader] or [np.zeros(0, np.int64)])


@torch.no_grad()
def calibrated_lr(params: list[nn.Parameter], relative_step: float) -> float | None:
    """The lr whose SGD step on the current (projected) gradients moves ``params`` by
    ``relative_step`` of their norm; None while the gradients are non-finite (an fp16 step the
    scaler skips) or zero.

    Why: the projected gradient keeps only the share of the forget gradient outside the
    retained subspace, which varies by orders of magnitude between models and forget sets, so
    a fixed lr is either inert or reckless; the step size relative to the weights is not.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    g = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in grads])))
    w = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p) for p in params])))
    if not math.isfinite(g) or g == 0.0:
        return None
    return relative_step * w / g


def autocast(precision: Precision) -> Any:
    """The precision's autocast, or fp32 where it would need loss scaling (fp16)."""
    if precision.needs_scaler:
        return torch.autocast(device_type=precision.device.type, enabled=False)
    return precision.autocast()


def curvature(loss: torch.Tensor, params: list[nn.Parameter], *, iterations: int) -> float:
    """λ_max of the Hessian of ``loss`` at the current weights (at least 1e-6): the step-size
    scale of ``ltu`` and ``lur`` (their look-ahead η_in and the cap on their lr).

    ``loss`` is built by the caller (under its autocast) on this rank's batches; the gradient
    is taken with ``create_graph`` and :func:`top_eigenvalue` runs the power iteration. Under
    torchrun each Hessian-vector product is averaged across ranks, so the estimate is that of
    the global batch's mean loss (as in one process) and the same number on every rank.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return max(top_eigenvalue(grads, params, iterations=iterations), 1e-6)


def global_gradient(grads: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    """``grads`` averaged across ranks, differentiably (identity in one process; every rank
    has the same ``None`` pattern): the inner gradient of a look-ahead step (``lur``, ``ltu``)
    is the global batch's. The all-reduce's backward sums the ranks' upstream gradients, so
    after :class:`~unforget.training.step.TrainStep` averages the outer gradients every rank
    holds the gradient of the global objective through the look-ahead."""
    present = distributed.average_all([g for g in grads if g is not None])
    averaged = iter(present)
    return tuple(None if g is None else next(averaged) for g in grads)


def top_eigenvalue(
    grads: tuple[torch.Tensor | None, ...], params: list[nn.Parameter], *, iterations: int
) -> float:
    """Largest |eigenvalue| of the Hessian behind ``grads`` (built with create_graph) by power
    iteration on Hessian-vector products; 0 when the gradient does not depend on ``params``.

    The start vector and every product are averaged across ranks (identity in one process):
    H = mean over ranks of the ranks' Hessians, the Hessian of the global batch's mean loss.
    """
    pairs = [(g, p) for g, p in zip(grads, params, strict=True) if g is not None]
    if not pairs or not any(g.requires_grad for g, _ in pairs):
        return 0.0
    vector = distributed.average_all([torch.randn_like(p) for _, p in pairs])
    value = 0.0
    for _ in range(iterations):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vector]))
        vector = [v / norm for v in vector]
        hvp = torch.autograd.grad(
            [g for g, _ in pairs],
            [p for _, p in pairs],
            grad_outputs=vector,
            retain_graph=True,
            allow_unused=True,
        )
        products = distributed.average_all(
            [h if h is not None else torch.zeros_like(v) for h, v in zip(hvp, vector, strict=True)]
        )
        value = float(sum((h * v).sum() for h, v in zip(products, vector, strict=True)))
        vector = [h.detach() for h in products]
    return abs(value)


def forget_epochs(task: UnlearnTask, *, budget: float, max_epochs: int) -> int:
    """Forget epochs for ``budget`` retain-epochs of work: ⌊budget·|R|/|F|⌋, in [1, max_epochs]."""
    return max(1, min(max_epochs, math.floor(budget * task.n_retain / max(task.n_forget, 1))))


def stop_problems(*, max_epochs: int, max_reference_drop: float) -> list[str]:
    """The checks every reference-stopped method makes on its epoch cap and accuracy floor."""
    problems = []
    if max_epochs < 1:
        problems.append("max_epochs must be >= 1")
    if not 0.0 < max_reference_drop <= 1.0:
        problems.append("max_reference_drop must be in (0, 1]")
    return problems


def stopped_outcome(
    model: nn.Module,
    before: dict[str, torch.Tensor],
    *,
    steps: int,
    stop: ReferenceStop,
    details: dict[str, Any],
) -> Outcome:
    """The outcome of a reference-stopped run: ``details`` plus the stop rule's history and
    kept epoch, its reason, and whether the weights moved from ``before``."""
    details.update(history=stop.history, kept_epoch=stop.kept_epoch)
    return Outcome(
        model=model,
        steps=steps,
        stop_reason=stop.reason(),
        details=details,
        weights_changed=weights_differ(before, model.state_dict()),
    )


def capped_lr(params: list[nn.Parameter], relative_step: float, cap: float) -> float | None:
    """:func:`calibrated_lr`, at most ``cap`` (the stable lr 1/λ_max scaled); None as there."""
    relative = calibrated_lr(params, relative_step)
    return min(relative, cap) if relative is not None else None


def quantiles_at(sorted_values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantiles of ``sorted_values`` (n,) at ``levels`` in [0, 1], by linear interpolation
    between order statistics (numpy's default "linear" rule); shape of ``levels``."""
    position = levels * (sorted_values.numel() - 1)
    low = position.floor().long()
    high = position.ceil().long()
    weight = position - low.to(position.dtype)
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight
