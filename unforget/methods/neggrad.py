"""neggrad: gradient ascent on the forget set, braked at the held-out accuracy.

"Negative gradient" baseline of Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless
Net", CVPR 2020 (arXiv 1911.04933), "GA" in Thudi et al. 2022 and Fan et al. ICLR 2024:

    θ ← θ + η ∇_θ L_F(θ),    L_F = mean_{(x,y)∈B_F} ℓ(x, y; θ)

L_F is unbounded above, so plain ascent does not converge: it drives the forget loss (and soon
every loss) to infinity. The papers bound it by a small lr and a few epochs tuned per dataset;
we add brakes that need no tuning:

* a cap of ``max_epochs`` passes over F (default 5, the upper end of the papers' range);
* a stop rule: every ``check_every`` steps the forget accuracy (on at most ``probe_rows`` forget
  rows) is compared with the accuracy a retrained model would have on them: the original model's
  accuracy on the reference split V (held-out rows methods may read) for rows of classes that
  stay, 0 for rows of classes removed whole (a model retrained without a class never predicts
  it). Once F is no better than that the run stops (reason ``forget_at_reference``). Without a
  reference split only the cap applies;
* the shared guard: a retain-accuracy collapse restores the last good weights and stops.

Optimiser: the recipe's, at ``lr_scale`` = 0.1 × its peak lr (ascent needs far smaller steps
than training to stay in the basin; the papers' GA searches 1e-5-1e-3 for SGD at 0.1 peak).
Eval mode throughout (frozen BatchNorm, no dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from unforget.methods.base import Loader, MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import (
    StopFn,
    accuracy,
    budget_problems,
    cycle,
    descend,
    device_batch,
    finish,
    lr_scale_field,
    require,
    steps_for,
)


@dataclass(frozen=True, kw_only=True)
class NegGradConfig:
    """Options of ``neggrad``."""

    max_epochs: float = field(default=5.0, metadata={"help": "cap, in passes over the forget set"})
    lr_scale: float = lr_scale_field(0.1)
    check_every: int = field(default=5, metadata={"help": "steps between forget-accuracy checks"})
    probe_rows: int = field(default=1024, metadata={"help": "forget rows in the accuracy probe"})
    stop_at_reference: bool = field(
        default=True, metadata={"help": "stop when forget accuracy falls to a retrained model's"}
    )

    def __post_init__(self) -> None:
        problems = budget_problems(epochs=self.max_epochs, lr_scale=self.lr_scale)
        if self.check_every < 1:
            problems.append("check_every must be >= 1")
        if self.probe_rows < 1:
            problems.append("probe_rows must be >= 1")
        require(problems)


def forget_probe(task: UnlearnTask, rows: int) -> Loader:
    """At most ``rows`` forget rows, evenly spaced over the forget set, in eval batches."""
    data = task.forget_eval.dataset
    n = len(data)  # type: ignore[arg-type]
    picks = np.unique(np.linspace(0, n - 1, num=min(rows, n)).round().astype(int)).tolist()
    subset = torch.utils.data.Subset(data, picks)
    return torch.utils.data.DataLoader(
        subset, batch_size=task.forget_eval.batch_size, collate_fn=task.forget_eval.collate_fn
    )


def reference_accuracy(task: UnlearnTask) -> float | None:
    """Accuracy of the current model on the reference split V, or None without one."""
    if task.reference is None or len(task.reference.dataset) == 0:  # type: ignore[arg-type]
        return None
    return accuracy(task.model, task.reference, task.precision)


def retrained_accuracy(task: UnlearnTask, probe: Loader, reference: float) -> float:
    """Expected forget accuracy of a retrained model: ``reference`` on probe rows whose class
    stays, 0 on rows of classes removed whole."""
    if not task.removed_classes:
        return reference
    labels = torch.cat([batch[1] for batch in probe])
    removed = torch.isin(labels, torch.tensor(task.removed_classes, dtype=labels.dtype))
    return reference * float((~removed).float().mean())


def accuracy_brake(
    task: UnlearnTask,
    probe: Loader,
    *,
    target: float,
    every: int,
    history: list[dict[str, float]],
) -> StopFn:
    """A stop rule: every ``every`` steps, forget accuracy on ``probe`` vs ``target``."""

    def stop(step: int) -> str | None:
        if step % every:
            return None
        current = accuracy(task.model, probe, task.precision)
        history.append({"step": step, "forget_accuracy": round(current, 4)})
        return "forget_at_reference" if current <= target else None

    return stop


class NegGrad:
    """Gradient ascent on L_F with a step cap and a held-out-accuracy stop rule."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="neggrad",
        summary="Gradient ascent on the forget set, stopped at held-out accuracy.",
        needs=("forget", "reference"),
        paper="Golatkar, Achille, Soatto, Eternal Sunshine of the Spotless Net, CVPR 2020, "
        "arXiv 1911.04933 (negative-gradient baseline)",
    )
    Config: ClassVar[type] = NegGradConfig

    def run(self, task: UnlearnTask, config: NegGradConfig) -> Outcome:
        steps = steps_for(task.forget, config.max_epochs)
        probe = forget_probe(task, config.probe_rows)
        start_forget = accuracy(task.model, probe, task.precision)
        reference = reference_accuracy(task)
        target = None if reference is None else retrained_accuracy(task, probe, reference)
        history: list[dict[str, float]] = []
        brake = None
        if config.stop_at_reference and target is not None:
            brake = accuracy_brake(
                task, probe, target=target, every=config.check_every, history=history
            )
        batches = cycle(task.forget)

        def loss() -> torch.Tensor:
            x, y = device_batch(next(batches), task.precision)
            return -nn.functional.cross_entropy(task.model(x).float(), y)

        trace = descend(
            task,
            name=self.info.name,
            lr_scale=config.lr_scale,
            steps=steps,
            loss_fn=loss,
            should_stop=brake,
        )
        details = {
            "max_steps": steps,
            "lr": task.spec.recipe.lr * config.lr_scale,
            "reference_accuracy": None if reference is None else round(reference, 6),
            "target_accuracy": None if target is None else round(target, 6),
            "forget_probe_accuracy_start": round(start_forget, 6),
            "history": history,
        }
        return finish(task, trace, details)


METHOD = NegGrad()
