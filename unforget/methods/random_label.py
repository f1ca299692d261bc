"""random-label: fine-tune on the forget set with random wrong labels, and on the retain set.

The "Random Labels" baseline of Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless
Net", CVPR 2020 (arXiv 1911.04933), in the form Fan et al. use as "RL" and build SalUn on
("SalUn", ICLR 2024, arXiv 2310.12508):

    min_θ  E_{(x,y)∈F, y'≠y} ℓ(x, y'; θ)  +  ρ · E_{(x,y)∈R} ℓ(x, y; θ)

Each forget sample is trained towards a label drawn uniformly from the C − 1 wrong classes,
y' = (y + k) mod C with k ~ U{1, …, C−1}; the retain term (weight ρ, default 1) repairs what the
relabelling breaks. Unlike ascent, the loss is bounded below, so the run cannot diverge.

Choices (recorded in the receipt): wrong labels are redrawn every time a sample is seen, with a
generator seeded by the run's seed (reproducible; in expectation the target is the uniform
distribution over wrong classes rather than one arbitrary wrong class per sample); each forget
batch is paired with the next retain batch (both cycled), for a length counted in passes over R
(default a tenth of the recipe's epochs, at least one); the recipe's optimiser at
``lr_scale`` × its peak lr, constant; no augmentation; eval mode throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from unforget.methods.base import MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import (
    LossFn,
    budget_problems,
    descend,
    device_batch,
    epochs_field,
    finish,
    lr_scale_field,
    paired,
    require,
    retain_epochs,
    steps_for,
)


@dataclass(frozen=True, kw_only=True)
class RandomLabelConfig:
    """Options of ``random-label``."""

    retain_weight: float = field(default=1.0, metadata={"help": "ρ, weight of the retain loss"})
    epochs: float | None = epochs_field()
    lr_scale: float = lr_scale_field(0.5)

    def __post_init__(self) -> None:
        problems = budget_problems(epochs=self.epochs, lr_scale=self.lr_scale)
        if not 0 <= self.retain_weight <= 100:
            problems.append("retain_weight must be in [0, 100]")
        require(problems)


def random_wrong_labels(
    y: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """y' = (y + k) mod C with k uniform on {1, …, C−1}: uniform over the wrong classes.

    Args:
        y: (B,) int64 true labels in [0, C).
        num_classes: C ≥ 2.
        generator: a CPU generator (keeps the draw independent of the device).
    Returns:
        (B,) int64 labels with y'[i] != y[i] for every i, on ``y``'s device.
    """
    offset = torch.randint(1, num_classes, tuple(y.shape), generator=generator)
    return (y + offset.to(y.device)) % num_classes


def relabel_objective(task: UnlearnTask, *, retain_weight: float, steps: int) -> LossFn:
    """ℓ(F batch, random wrong labels) + ρ·ℓ(R batch, labels), over ``steps`` paired batches."""
    pairs = paired(task.forget, task.retain, steps=steps)
    generator = torch.Generator().manual_seed(task.seed + 2)
    ce = nn.functional.cross_entropy

    def loss() -> torch.Tensor:
        f_batch, r_batch = next(pairs)
        xf, yf = device_batch(f_batch, task.precision)
        xr, yr = device_batch(r_batch, task.precision)
        forget_logits = task.model(xf).float()
        wrong = random_wrong_labels(yf, forget_logits.shape[1], generator)
        return ce(forget_logits, wrong) + retain_weight * ce(task.model(xr).float(), yr)

    return loss


class RandomLabel:
    """Fine-tune on F with random wrong labels plus R with true labels."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="random-label",
        summary="Fine-tune on forget data with random wrong labels plus retain data.",
        needs=("forget", "retain"),
        paper="Golatkar, Achille, Soatto, Eternal Sunshine of the Spotless Net, CVPR 2020, "
        "arXiv 1911.04933 (random labels); Fan et al., SalUn, ICLR 2024 (RL)",
    )
    Config: ClassVar[type] = RandomLabelConfig

    def run(self, task: UnlearnTask, config: RandomLabelConfig) -> Outcome:
        epochs = retain_epochs(task, config.epochs)
        steps = steps_for(task.retain, epochs)
        loss = relabel_objective(task, retain_weight=config.retain_weight, steps=steps)
        trace = descend(
            task,
            name=self.info.name,
            steps=steps,
            loss_fn=loss,
            lr_scale=config.lr_scale,
        )
        details = {
            "retain_epochs": round(epochs, 4),
            "lr": task.spec.recipe.lr * config.lr_scale,
        }
        return finish(task, trace, details)


METHOD = RandomLabel()
