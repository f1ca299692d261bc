"""LUR: Learning to Unlearn while Retaining (Patel, Qiu; arXiv 2503.06339, 2025).

Idea (the paper's method section): take a look-ahead step on the unlearning objective,
evaluate the retention loss AT the looked-ahead parameters, and update with the gradient of
the sum. In our notation (equation numbers are ours: the paper's are not quoted because its
method section could not be checked against a stored copy)::

    (1) θ' = θ − η_in ∇_θ L_F(θ)                                    look-ahead
    (2) total(θ) = L_F(θ) + λ · L_R(θ'(θ))                          objective
    (3) L_R(θ') ≈ L_R(θ) − η_in ∇L_R·∇L_F                           first order in η_in

By (3), minimising (2) also rewards forget and retain gradients that agree: an implicit
regulariser against gradient conflict, without an explicit projection (cheaper in memory and
time than projection methods such as ``ltu``'s harmonisation or ``pgu``).

Choices where the paper leaves them open, and why:

- ``L_F`` is the random-label loss: cross-entropy to a WRONG class, one per forget row (a hash
  of row and seed; ``fixed_labels=false`` re-draws them every step), as in SalUn's RL
  objective. It is bounded below, so unlike negated cross-entropy it cannot run away.
- SECOND order by default: ``θ'`` is built with :func:`torch.func.functional_call` from a
  gradient taken with ``create_graph=True`` and ``total.backward()`` differentiates through
  it. The regulariser of (3) is the ``−η_in ∇L_R·∇L_F`` term, whose gradient needs the
  Hessian-vector products ``∇²L_F ∇L_R`` and ``∇²L_R ∇L_F``; a first-order version
  (``first_order=true``: ``θ'`` from a detached gradient) keeps only the look-ahead point, and
  is offered for models where double backward is too costly.
- Step sizes from the model, not per data set: ``λ_max`` of ``∇²L_F`` on one forget batch is
  estimated by power iteration and ``η_in = inner_scale/λ_max`` keeps the look-ahead well
  inside the stable region (beyond it ``(I − η_in ∇²L_F)`` amplifies instead of
  regularising). The SGD lr of the update is calibrated on the first step so the update moves
  θ by ``relative_step`` of ‖θ‖, and never exceeds ``lr_scale/λ_max(∇²(L_F + λ·L_R))``
  (curvature alone misleads at a memorising optimum, where the saturated softmax makes it
  tiny while random-label gradients are large). Either can be fixed (``inner_lr``, ``lr``).
- ``L_R`` is cross-entropy on a retain batch (each forget batch paired with the next one);
  ``λ`` = ``retain_weight`` = 1.
- Length and stop: at most ``⌊budget·|R|/|F|⌋`` forget epochs (capped); after each, forget
  accuracy is compared with reference accuracy (:class:`~unforget.methods.pgu.ReferenceStop`:
  stop once it is at or below, keeping the closer of the last two epochs, or once reference
  accuracy has fallen ``max_reference_drop`` below its start).
- Mixed precision: bf16 autocast where available; fp16-only GPUs run in fp32 (loss scaling
  through a look-ahead step is fragile).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from unforget.errors import InputError
from unforget.methods.base import MethodInfo, Outcome, UnlearnTask
from unforget.methods.common import (
    ReferenceStop,
    autocast,
    capped_lr,
    curvature,
    forget_epochs,
    global_gradient,
    stop_problems,
    stopped_outcome,
)
from unforget.methods.loop import Guard, cycle, device_batch, freeze_batchnorm, require
from unforget.methods.random_label import random_wrong_labels
from unforget.runtime.device import Precision
from unforget.runtime.progress import Tick
from unforget.training.step import TrainStep, optimizer_for


@dataclass(frozen=True, kw_only=True)
class LurConfig:
    """Options of ``lur`` (``--set key=value``)."""

    lr: float | None = field(
        default=None,
        metadata={"help": "SGD lr of the outer update; None: calibrated by relative_step"},
    )
    relative_step: float = field(
        default=0.002, metadata={"help": "calibrated lr: first update moves θ by this share of ‖θ‖"}
    )
    lr_scale: float = field(
        default=1.0,
        metadata={"help": "calibrated lr never exceeds lr_scale / λ_max(∇²(L_F + λ·L_R))"},
    )
    inner_lr: float | None = field(
        default=None, metadata={"help": "η_in of the look-ahead; None: inner_scale / λ_max"}
    )
    inner_scale: float = field(
        default=0.1, metadata={"help": "calibrated η_in as a share of 1/λ_max"}
    )
    retain_weight: float = field(
        default=1.0, metadata={"help": "λ: weight of the retention loss at θ'"}
    )
    power_iterations: int = field(
        default=10, metadata={"help": "Hessian-vector products to estimate λ_max"}
    )
    fixed_labels: bool = field(
        default=True, metadata={"help": "one wrong label per forget row (else re-drawn every step)"}
    )
    first_order: bool = field(
        default=False,
        metadata={"help": "detach the look-ahead gradient (cheaper, drops the regulariser)"},
    )
    budget: float = field(
        default=1.0, metadata={"help": "forget epochs = ⌊budget·|R|/|F|⌋, capped by max_epochs"}
    )
    max_epochs: int = field(default=30, metadata={"help": "cap on forget epochs"})
    max_reference_drop: float = field(
        default=0.03, metadata={"help": "stop if reference accuracy falls this far below start"}
    )

    def __post_init__(self) -> None:
        problems = []
        for name in ("relative_step", "lr_scale", "inner_scale", "budget"):
            if getattr(self, name) <= 0.0:
                problems.append(f"{name} must be > 0")
        for name in ("lr", "inner_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0.0:
                problems.append(f"{name} must be > 0 (or none to calibrate it)")
        if self.retain_weight < 0.0:
            problems.append("retain_weight must be >= 0")
        if self.power_iterations < 1:
            problems.append("power_iterations must be >= 1")
        problems += stop_problems(
            max_epochs=self.max_epochs, max_reference_drop=self.max_reference_drop
        )
        require(problems)


def fixed_wrong_labels(
    y: torch.Tensor, rows: torch.Tensor, num_classes: int, *, seed: int
) -> torch.Tensor:
    """A wrong class per training row, the same every time the row is drawn (a hash of row
    and seed picks the shift 1..C−1)."""
    mixed = (rows * 2654435761 + seed * 40503) % 4294967291
    return (y + 1 + mixed % (num_classes - 1)) % num_classes


def look_ahead(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    forget_loss: torch.Tensor,
    *,
    step: float,
    create_graph: bool,
) -> dict[str, torch.Tensor]:
    """``θ' = θ − step · ∇_θ L_F`` as a name -> tensor dict for ``functional_call``.

    With ``create_graph`` the gradient keeps its graph, so ``θ'`` is differentiable in ``θ``
    to second order; otherwise it is detached (``∂θ'/∂θ = I``). Under torchrun the gradient is
    averaged across ranks, differentiably (:func:`~unforget.methods.common.global_gradient`):
    ``θ'`` is the look-ahead of the global forget batch, the same on every rank, as in one
    process (a per-rank look-ahead on half the batch is another, non-linear, objective).
    """
    grads = global_gradient(
        torch.autograd.grad(
            forget_loss,
            list(params.values()),
            allow_unused=True,
            retain_graph=True,
            create_graph=create_graph,
        )
    )
    return {
        name: p if g is None else p - step * g
        for (name, p), g in zip(params.items(), grads, strict=True)
    }


def lur_objective(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    forget: tuple[torch.Tensor, torch.Tensor],
    retain: tuple[torch.Tensor, torch.Tensor],
    *,
    inner_lr: float,
    retain_weight: float,
    create_graph: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, L_F(θ), L_R(θ'))`` for one forget batch (with its target labels) and one
    retain batch; ``total`` backpropagates through the look-ahead."""
    forget_loss = nn.functional.cross_entropy(model(forget[0]).float(), forget[1])
    fast = look_ahead(model, params, forget_loss, step=inner_lr, create_graph=create_graph)
    retain_loss = nn.functional.cross_entropy(
        functional_call(model, fast, (retain[0],)).float(), retain[1]
    )
    return forget_loss + retain_weight * retain_loss, forget_loss, retain_loss


class Lur:
    info: ClassVar[MethodInfo] = MethodInfo(
        name="lur",
        summary="Random-label forgetting with the retain loss taken after a look-ahead step",
        needs=("forget", "retain", "reference"),
        paper="Patel, Qiu. Learning to Unlearn while Retaining: Combating Gradient Conflicts "
        "in Machine Unlearning. arXiv 2503.06339 (2025)",
    )
    Config: ClassVar[type] = LurConfig

    def run(self, task: UnlearnTask, config: LurConfig) -> Outcome:
        model = task.model
        freeze_batchnorm(model)
        before = copy.deepcopy(model.state_dict())
        stop = ReferenceStop(model, task, max_drop=config.max_reference_drop)
        details: dict[str, Any] = {
            "order": "first" if config.first_order else "second",
            "forget_loss": "random-label",
        }
        steps = 0
        if not stop.measure(0):
            steps = _loop(task, config, stop, details)
        return stopped_outcome(model, before, steps=steps, stop=stop, details=details)


def _loop(
    task: UnlearnTask, config: LurConfig, stop: ReferenceStop, details: dict[str, Any]
) -> int:
    """Look-ahead steps over forget epochs with the stop rule; returns the steps taken."""
    model, precision = task.model, task.precision
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    generator = torch.Generator().manual_seed(task.seed)
    forget_it, retain_it = cycle(task.forget), cycle(task.retain)
    x, _ = device_batch(next(cycle(task.forget_eval)), precision)
    with torch.no_grad(), autocast(precision):
        classes = int(model(x[:1]).shape[1])
    if classes < 2:
        raise InputError("lur: random-label forgetting needs a model with at least 2 classes")

    def forget_batch() -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(forget_it)
        x, y = device_batch(batch, precision)
        if config.fixed_labels:
            return x, fixed_wrong_labels(y, batch[2].to(y.device), classes, seed=task.seed)
        return x, random_wrong_labels(y, classes, generator)

    forget0, retain0 = forget_batch(), device_batch(next(retain_it), precision)
    # under torchrun: the curvature of the global first batches, the same on every rank
    curvature_f = _curvature(model, params, (forget0,), config, precision)
    curvature_t = _curvature(model, params, (forget0, retain0), config, precision)
    inner_lr = config.inner_lr or config.inner_scale / curvature_f
    lr, stable_lr = config.lr, config.lr_scale / curvature_t
    details.update(curvature_forget=curvature_f, curvature_total=curvature_t, inner_lr=inner_lr)
    optimizer = optimizer_for(
        "sgd", list(params.values()), lr=lr or 0.0, eager=not precision.compile
    )
    # fp32 where fp16 would need loss scaling (it is fragile through a look-ahead step)
    train_step = TrainStep(model, optimizer, precision=precision, scale=False)
    guard = Guard(model, task.retain_eval, precision, task.guard)
    guard.start()
    epochs = forget_epochs(task, budget=config.budget, max_epochs=config.max_epochs)
    per_epoch, step = len(task.forget), 0
    parts: dict[str, torch.Tensor] = {}

    def objective() -> torch.Tensor:
        total, parts["forget"], parts["retain"] = lur_objective(
            model,
            params,
            forget_batch(),
            device_batch(next(retain_it), precision),
            inner_lr=inner_lr,
            retain_weight=config.retain_weight,
            create_graph=not config.first_order,
        )
        return total

    def calibrate() -> None:  # the first step's lr, from the rank-averaged gradient
        nonlocal lr
        if lr is None:
            lr = capped_lr(list(params.values()), config.relative_step, stable_lr)
            optimizer.param_groups[0]["lr"] = details["lr"] = lr or 0.0

    fields: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        for _ in range(per_epoch):
            train_step(objective, before_update=calibrate)
            step += 1
            if step % task.guard.check_every == 0:
                fields = _check(train_step, guard, parts, step)
                guard.check(step=step, method="lur")
            task.on_progress(Tick("lur", step, epochs * per_epoch, fields))
        _check(train_step, guard, parts, step)
        if stop.measure(epoch):
            break
    return step


def _check(
    train_step: TrainStep, guard: Guard, parts: dict[str, torch.Tensor], step: int
) -> dict[str, float]:
    """The non-finite check and the last step's two losses (host syncs at checks only)."""
    value, finite = train_step.flush()
    guard.check_loss(value if finite else float("nan"), step=step, method="lur")
    return {f"{k}_loss": float(v.detach()) for k, v in parts.items()}


def _curvature(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...],
    config: LurConfig,
    precision: Precision,
) -> float:
    """λ_max of the Hessian of ``L_F`` (one batch) or ``L_F + λ·L_R`` (a forget and a retain
    batch) at θ (:func:`~unforget.methods.common.curvature`, the global batch's under torchrun)."""
    with autocast(precision):
        losses = [nn.functional.cross_entropy(model(x).float(), y) for x, y in batches]
        loss = losses[0] + config.retain_weight * sum(losses[1:])
    return curvature(loss, list(params.values()), iterations=config.power_iterations)


METHOD = Lur()
