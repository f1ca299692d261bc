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

The small fine-tuning machinery this shares with the other gradient baselines (:func:`descend`,
:func:`recipe_optimizer`, :func:`retain_epochs`, :func:`retain_objective`) is in
:mod:`unforget.methods.loop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from unforget.methods.base import MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import (
    budget_problems,
    descend,
    epochs_field,
    finish,
    lr_scale_field,
    require,
    retain_epochs,
    retain_objective,
    steps_for,
)


@dataclass(frozen=True, kw_only=True)
class FineTuneConfig:
    """Options of ``finetune``."""

    epochs: float | None = epochs_field()
    lr_scale: float = lr_scale_field(0.5)

    def __post_init__(self) -> None:
        require(budget_problems(epochs=self.epochs, lr_scale=self.lr_scale))


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
        trace = descend(
            task,
            name=self.info.name,
            lr_scale=config.lr_scale,
            steps=steps_for(task.retain, epochs),
            loss_fn=retain_objective(task),
            schedule=task.spec.recipe.schedule,
        )
        details = {
            "retain_epochs": round(epochs, 4),
            "lr": task.spec.recipe.lr * config.lr_scale,
            "optimizer": task.spec.recipe.optimizer,
            "schedule": task.spec.recipe.schedule,
        }
        return finish(task, trace, details)


METHOD = FineTune()
