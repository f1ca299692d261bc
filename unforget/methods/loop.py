"""Plain functions shared by the gradient methods: batch pairing, guard rails, quick checks, and
the small fine-tuning machinery the gradient baselines share (:func:`descend` with the recipe's
optimiser, :func:`retain_epochs`, :func:`retain_objective`, :func:`finish`)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unforget.data.loaders import Batch, RowSource, to_device, with_rows
from unforget.errors import GuardRailError, InputError
from unforget.methods.base import GuardConfig, Loader, Outcome, UnlearnTask
from unforget.runtime.device import Precision
from unforget.runtime.distributed import any_rank
from unforget.runtime.progress import Tick
from unforget.training.evaluate import Outputs
from unforget.training.loop import augment, lr_factor, make_optimizer
from unforget.training.step import TrainStep, optimizer_for

DEFAULT_SHARE = 0.1  # default length: this share of the recipe's epochs, in passes over R

LossFn = Callable[[], torch.Tensor]
StopFn = Callable[[int], str | None]

EPOCHS_HELP = "passes over the retain set; default: a tenth of the recipe's epochs, at least 1"
LR_SCALE_HELP = "learning rate as a multiple of the recipe's peak lr"


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


RESIDENT_BYTES = 256 * 2**20  # largest evaluation set kept in memory by :func:`resident`


def resident(loader: Loader, *, limit: int = RESIDENT_BYTES) -> Iterable[Batch]:
    """The batches of a fixed-order evaluation loader, read once and kept in host memory when
    they fit in ``limit`` bytes (else the loader itself): a loop's periodic checks evaluate the
    same rows again and again, and on Fashion-MNIST reading and decoding them from Arrow cost
    about twice the forward pass (0.50 of 0.62 CPU-s for 18,000 rows). The same tensors in the
    same batches, so every number is unchanged."""
    batches: list[Batch] = []
    size = 0
    for batch in loader:
        size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
        if size > limit:
            return loader
        batches.append(batch)
    return batches


def first_rows(loader: Loader, count: int) -> Loader:
    """The first ``count`` rows of an unshuffled loader, in the same batches: a check reads only
    its fixed sample (proxy-distill's fit check: at 30 % of 60,000 rows, 512 forget rows
    instead of 18,000 per check). With the same batch size the first batches are the same
    tensors, so the logits are the same (a :class:`RowSource` loader keeps only those rows;
    any other reads them through a :class:`~torch.utils.data.Subset`)."""
    dataset = loader.dataset
    total = len(dataset)  # type: ignore[arg-type]
    if count >= total:
        return loader
    if isinstance(dataset, RowSource):
        return with_rows(loader, dataset.rows[:count])
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(count)),
        batch_size=loader.batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


@dataclass(frozen=True)
class EvalSets:
    """A loop's fixed check samples, resident in memory where they fit (:func:`resident`)."""

    retain: Iterable[Batch]  # the fixed retain sample (task.retain_eval)
    reference: Iterable[Batch]  # the held-out rows methods may read (task.reference)
    forget: Iterable[Batch]  # the forget rows the loop checks (task.forget_eval by default)
    at_most: int | None = None  # the first rows of retain and reference read; None: all

    @classmethod
    def of(
        cls, task: UnlearnTask, *, forget: Loader | None = None, at_most: int | None = None
    ) -> EvalSets:
        """``at_most``: the first that many rows of the retain sample and of V (the checks'
        accuracies), all of them when None."""

        def part(loader: Loader) -> Loader:
            return loader if at_most is None else first_rows(loader, at_most)

        reference: Iterable[Batch] = []
        if task.reference is not None:
            reference = resident(part(task.reference))
        return cls(
            retain=resident(part(task.retain_eval)),
            reference=reference,
            forget=resident(forget if forget is not None else task.forget_eval),
            at_most=at_most,
        )

    def cut(self, measured: dict[str, Outputs]) -> dict[str, Outputs]:
        """Outputs already measured over the whole ``task.retain_eval`` / ``task.reference``
        (``"retain"`` / ``"reference"``), cut to the rows these sets read, the first
        ``at_most`` in the same order (:func:`first_rows`); any other entry as it is. Kept
        beside :meth:`of` so the two cuts cannot drift apart."""
        if self.at_most is None:
            return dict(measured)
        return {
            name: out.first(self.at_most) if name in ("retain", "reference") else out
            for name, out in measured.items()
        }


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Batch], precision: Precision) -> float:
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
def mean_loss(model: nn.Module, loader: Iterable[Batch], precision: Precision) -> float:
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
    loader: Iterable[Batch]  # a fixed sample (a loader or resident batches)
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
        if any_rank(not math.isfinite(value)):
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
        if any_rank(current < self.baseline - self.config.max_retain_drop):
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
    params = [p for p in task.model.parameters() if p.requires_grad]
    return make_optimizer(params, recipe, eager=not task.precision.compile)


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
    lr_scale: float,
    steps: int,
    loss_fn: LossFn,
    schedule: str = "constant",
    after_step: Callable[[], None] | None = None,
    should_stop: StopFn | None = None,
) -> Trace:
    """Minimise ``loss_fn()`` for up to ``steps`` steps of the recipe's optimiser at ``lr_scale``
    × its peak lr (:func:`recipe_optimizer`) on ``task.model``, guarded.

    Each step (:class:`~unforget.training.step.TrainStep`): lr ← base lr ×
    ``lr_factor(schedule)``; the loss under autocast, backward and step through the AMP scaler
    (gradients averaged across ranks under torchrun); ``after_step()`` (e.g. SalUn's weight
    mask); a progress tick; ``should_stop(step)`` may end the run early with a reason (agreed
    across ranks: a rank whose evaluation says stop stops every rank). Every
    ``task.guard.check_every`` steps and once more at the end (the only host syncs): a
    non-finite loss since the last check restores the last good weights and raises
    :class:`GuardRailError`, then the retain-accuracy floor. The model stays in eval mode.
    """
    model = task.model
    optimizer = recipe_optimizer(task, lr_scale=lr_scale)
    freeze_batchnorm(model)
    guard = Guard(model, resident(task.retain_eval), task.precision, task.guard)
    guard.start()
    train_step = TrainStep(model, optimizer, precision=task.precision)
    base = [group["lr"] for group in optimizer.param_groups]
    first = float("nan")
    reason, step, start = "budget", 0, time.perf_counter()
    for step in range(1, steps + 1):
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * lr_factor(schedule, step - 1, steps)
        train_step(loss_fn)
        if step == 1:
            first = checked_loss(train_step, guard, step=step, method=name)
        if after_step is not None:
            after_step()
        if step % task.guard.check_every == 0:
            checked_loss(train_step, guard, step=step, method=name)
            guard.check(step=step, method=name)
        task.on_progress(Tick(name, step, steps, {"loss": train_step.last}))
        stop = should_stop(step) if should_stop is not None else None
        if should_stop is not None and any_rank(bool(stop)):  # all ranks leave together
            reason = stop or "stopped_on_another_rank"
            break
    last = checked_loss(train_step, guard, step=step, method=name)
    if step % task.guard.check_every:  # the steps since the last periodic check: check once more
        guard.check(step=0, method=name)
    return Trace(step, reason, first, last, time.perf_counter() - start)


def checked_loss(train_step: TrainStep, guard: Guard, *, step: int, method: str) -> float:
    """The last loss, after the non-finite check of every loss since the previous check (agreed
    across ranks): what every loop calls at its checks, the only place it reads the loss."""
    value, finite = train_step.flush()
    guard.check_loss(value if finite else float("nan"), step=step, method=method)
    return value


def require(problems: list[str]) -> None:
    """What every ``Config.__post_init__`` ends with: one ``ValueError`` naming all problems."""
    if problems:
        raise ValueError("; ".join(problems))


def epochs_field() -> Any:
    """The ``epochs`` option of the fine-tuning baselines (None: :func:`retain_epochs`)."""
    return field(default=None, metadata={"help": EPOCHS_HELP})


def lr_scale_field(default: float) -> Any:
    """The ``lr_scale`` option of the fine-tuning baselines (see :func:`recipe_optimizer`)."""
    return field(default=default, metadata={"help": LR_SCALE_HELP})


def finish(task: UnlearnTask, trace: Trace, details: dict[str, Any]) -> Outcome:
    """The outcome of a :func:`descend` run: ``details`` followed by the trace's own."""
    return Outcome(
        model=task.model,
        steps=trace.steps,
        stop_reason=trace.stop_reason,
        details={**details, **trace.details()},
    )


def adamw_step(task: UnlearnTask, model: nn.Module, *, lr: float, weight_decay: float) -> TrainStep:
    """AdamW over all of ``model``'s parameters in a :class:`TrainStep` (∇τ's and
    proxy-distill's update; ``.optimizer`` gives the optimiser for lr schedules)."""
    optimizer = optimizer_for(
        "adamw",
        list(model.parameters()),
        lr=lr,
        weight_decay=weight_decay,
        eager=not task.precision.compile,
    )
    return TrainStep(model, optimizer, precision=task.precision)


def require_reference(task: UnlearnTask, method: str, *, minimum: int = 1) -> Loader:
    """The task's held-out reference loader, or an InputError naming the method when there are
    fewer than ``minimum`` reference rows (``data.reference_fraction`` sets how many)."""
    rows = 0 if task.reference is None else len(task.reference.dataset)  # type: ignore[arg-type]
    if task.reference is None or rows < minimum:
        raise InputError(
            f"{method} needs at least {minimum} held-out reference row(s), has {rows} "
            "(data.reference_fraction of the held-out split)"
        )
    return task.reference
