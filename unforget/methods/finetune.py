"""finetune: keep training on the retain set only, and let the forget set fade.

The oldest unlearning baseline ("Fine-tune" in Golatkar, Achille, Soatto, "Eternal Sunshine of
the Spotless Net: Selective Forgetting in Deep Networks", CVPR 2020, arXiv 1911.04933; "FT" in
Kurmanji et al. NeurIPS 2023, Jia et al. NeurIPS 2023 and Fan et al. ICLR 2024). Starting from the
trained weights θ_o, run

    θ ← θ − η_t ∇_θ L_R(θ),    L_R = mean_{(x,y)∈B_R} ℓ(x, y; θ)

for a few passes over R. F is never read: whatever the model forgets about F, it forgets through
drift (catastrophic forgetting), so FT forgets little when F looks like R (random forgetting) and
is the reference point every other method must beat.

Choices where the papers leave room (all recorded in the receipt):

* Length: a tenth of the original training run's passes, at least one pass over R. Papers use
  ~10 epochs against ~180 of training (5%); a tenth keeps FT well under the cost of retraining
  for short recipes too, and it scales with the data, so no per-dataset tuning is needed.
* Optimiser: the recipe's own (AdamW or SGD with its momentum and weight decay), at
  ``lr_scale`` × the recipe's peak lr, decayed by the recipe's schedule over the fine-tune. The
  papers search 0.01-0.1 for SGD-trained ResNets whose peak lr is 0.1 (0.1×-1×); we take the
  middle, 0.5×. Measured on a small MLP removing one class in one pass, the forget accuracy went
  from 94% to 79% / 52% / 32% at 0.1× / 0.5× / 1×, with held-out accuracy on the other classes
  unchanged at all three; on a random 10% it did not move at any of them (FT's known weakness).
* Batches get the recipe's augmentation and label smoothing: this is "the same recipe".
* Eval mode (frozen BatchNorm statistics, no dropout), as for every unforget method: unlearning
  must not re-estimate normalisation statistics from R alone.

This module also holds the small fine-tuning machinery the other gradient baselines share
(:func:`descend`, :func:`recipe_optimizer`, :func:`retain_epochs`, :func:`retain_objective`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from unforget.methods.base import Loader, MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import Guard, cycle, device_batch, freeze_batchnorm
from unforget.progress import Tick
from unforget.train import augment, lr_factor, make_optimizer

DEFAULT_SHARE = 0.1  # default length: this share of the recipe's epochs, in passes over R

LossFn = Callable[[], torch.Tensor]
StopFn = Callable[[int], str | None]

EPOCHS_HELP = "passes over the retain set; default: a tenth of the recipe's epochs, at least 1"


@dataclass(frozen=True, kw_only=True)
class FineTuneConfig:
    """Options of ``finetune``."""

    epochs: float | None = field(default=None, metadata={"help": EPOCHS_HELP})
    lr_scale: float = field(
        default=0.5, metadata={"help": "learning rate as a multiple of the recipe's peak lr"}
    )

    def __post_init__(self) -> None:
        problems = budget_problems(epochs=self.epochs, lr_scale=self.lr_scale)
        if problems:
            raise ValueError("; ".join(problems))


def budget_problems(*, epochs: float | None, lr_scale: float) -> list[str]:
    """The checks every fine-tuning baseline makes on its length and learning rate."""
    problems = []
    if epochs is not None and not 0 < epochs <= 1000:
        problems.append("epochs must be in (0, 1000]")
    if not 0 < lr_scale <= 10:
        problems.append("lr_scale must be in (0, 10]")
    return problems


def retain_epochs(task: UnlearnTask, epochs: float | None) -> float:
    """Passes over R: ``epochs`` if given, else a tenth of the recipe's epochs (at least 1)."""
    if epochs is not None:
        return epochs
    return max(1.0, DEFAULT_SHARE * task.spec.recipe.epochs)


def steps_for(loader: Loader, epochs: float) -> int:
    """Optimiser steps in ``epochs`` passes over ``loader`` (at least one)."""
    return max(1, math.ceil(epochs * len(loader)))


def recipe_optimizer(task: UnlearnTask, *, lr_scale: float) -> torch.optim.Optimizer:
    """The recipe's optimiser (with its momentum and weight decay) at ``lr_scale`` × its lr."""
    recipe = dataclasses.replace(task.spec.recipe, lr=task.spec.recipe.lr * lr_scale)
    return make_optimizer([p for p in task.model.parameters() if p.requires_grad], recipe)


def retain_objective(task: UnlearnTask) -> LossFn:
    """L_R on the next retain batch, with the recipe's augmentation and label smoothing."""
    recipe = task.spec.recipe
    batches = cycle(task.retain)
    generator = torch.Generator().manual_seed(task.seed + 1)

    def loss() -> torch.Tensor:
        x, y = device_batch(next(batches), task.precision)
        x = augment(x, recipe.augmentation, generator)
        logits = task.model(x).float()
        return nn.functional.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)

    return loss


@dataclass(frozen=True)
class Trace:
    """What :func:`descend` did: steps taken, why it stopped, first and last loss, wall time."""

    steps: int
    stop_reason: str
    first_loss: float
    last_loss: float
    seconds: float

    def details(self) -> dict[str, Any]:
        return {
            "first_loss": round(self.first_loss, 6),
            "last_loss": round(self.last_loss, 6),
            "loop_seconds": round(self.seconds, 3),
        }


def descend(
    task: UnlearnTask,
    *,
    name: str,
    optimizer: torch.optim.Optimizer,
    steps: int,
    loss_fn: LossFn,
    schedule: str = "constant",
    after_step: Callable[[], None] | None = None,
    should_stop: StopFn | None = None,
) -> Trace:
    """Minimise ``loss_fn()`` for up to ``steps`` optimiser steps on ``task.model``, guarded.

    Each step: lr ← base lr × ``lr_factor(schedule)``; the loss under autocast (a non-finite loss
    restores the last good weights and raises :class:`GuardRailError`); backward and step
    through the AMP scaler; ``after_step()`` (e.g. SalUn's weight mask); the retain-accuracy
    floor every ``task.guard.check_every`` steps and once more at the end; a progress tick;
    ``should_stop(step)`` may end the run early with a reason. The model stays in eval mode.
    """
    model = task.model
    freeze_batchnorm(model)
    guard = Guard(model, task.retain_eval, task.precision, task.guard)
    guard.start()
    scaler = task.precision.scaler()
    base = [group["lr"] for group in optimizer.param_groups]
    first = last = float("nan")
    reason, step, start = "budget", 0, time.perf_counter()
    for step in range(1, steps + 1):
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * lr_factor(schedule, step - 1, steps)
        with task.precision.autocast():
            loss = loss_fn()
        last = float(loss.detach())
        guard.check_loss(last, step=step, method=name)
        first = last if step == 1 else first
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        guard.check(step=step, method=name)
        task.on_progress(Tick(name, step, steps, {"loss": last}))
        stop = should_stop(step) if should_stop is not None else None
        if stop:
            reason = stop
            break
    if step % task.guard.check_every:  # the steps since the last periodic check: check once more
        guard.check(step=0, method=name)
    return Trace(step, reason, first, last, time.perf_counter() - start)


class FineTune:
    """Descend on L_R alone with the recipe's optimiser at a lower learning rate."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="finetune",
        summary="Keep training on the retain set only (catastrophic-forgetting baseline).",
        needs=("retain",),
        paper="Golatkar, Achille, Soatto, Eternal Sunshine of the Spotless Net, CVPR 2020, "
        "arXiv 1911.04933 (Fine-tune baseline)",
    )
    Config: ClassVar[type] = FineTuneConfig

    def run(self, task: UnlearnTask, config: FineTuneConfig) -> Outcome:
        epochs = retain_epochs(task, config.epochs)
        steps = steps_for(task.retain, epochs)
        optimizer = recipe_optimizer(task, lr_scale=config.lr_scale)
        trace = descend(
            task,
            name=self.info.name,
            optimizer=optimizer,
            steps=steps,
            loss_fn=retain_objective(task),
            schedule=task.spec.recipe.schedule,
        )
        details = {
            "retain_epochs": round(epochs, 4),
            "lr": task.spec.recipe.lr * config.lr_scale,
            "optimizer": task.spec.recipe.optimizer,
            "schedule": task.spec.recipe.schedule,
            **trace.details(),
        }
        return Outcome(
            model=task.model, steps=trace.steps, stop_reason=trace.stop_reason, details=details
        )


METHOD = FineTune()
