"""l1-sparse: fine-tune on the retain set with a decaying ℓ1 penalty that pushes towards sparsity.

Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023 (arXiv 2304.04934), the "ℓ1-sparse MU" method:

    min_θ  L_R(θ) + γ_t ‖θ‖₁,   starting from θ_o,   γ_t = γ · (1 − t/T)

Sparsity shrinks the weights that only a few samples rely on, and the paper shows that
unlearning a sparse model by fine-tuning closes much of the gap to retraining. The penalty is
strongest at the start (drive small weights to zero) and vanishes at the end (pure fine-tuning
repairs the accuracy): the paper's linearly decreasing scheduler.

Choices (recorded in the receipt):

* ‖θ‖₁ sums over every trainable parameter, as in the paper.
* γ decays linearly per step rather than per epoch (the same line, without steps); its default
  is the paper's 5e-4.
* Everything else is ``finetune``'s: the recipe's optimiser at ``lr_scale`` × its peak lr with
  the recipe's schedule, the recipe's augmentation and label smoothing, a length of a tenth of
  the recipe's epochs (at least one pass over R), eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

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
class L1SparseConfig:
    """Options of ``l1-sparse``."""

    gamma: float = field(default=5e-4, metadata={"help": "initial ℓ1 weight γ (decays to 0)"})
    epochs: float | None = epochs_field()
    lr_scale: float = lr_scale_field(0.5)

    def __post_init__(self) -> None:
        problems = budget_problems(epochs=self.epochs, lr_scale=self.lr_scale)
        if not 0 <= self.gamma <= 1:
            problems.append("gamma must be in [0, 1]")
        require(problems)


def l1_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """‖θ‖₁ over ``params`` (fp32)."""
    return torch.stack([p.float().abs().sum() for p in params]).sum()


class L1Sparse:
    """Fine-tune on R with γ_t‖θ‖₁, γ_t decaying linearly to 0."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="l1-sparse",
        summary="Fine-tune on the retain set with a linearly decaying ℓ1 sparsity penalty.",
        needs=("retain",),
        paper="Jia et al., Model Sparsity Can Simplify Machine Unlearning, NeurIPS 2023, "
        "arXiv 2304.04934 (ℓ1-sparse MU)",
    )
    Config: ClassVar[type] = L1SparseConfig

    def run(self, task: UnlearnTask, config: L1SparseConfig) -> Outcome:
        epochs = retain_epochs(task, config.epochs)
        steps = steps_for(task.retain, epochs)
        params = [p for p in task.model.parameters() if p.requires_grad]
        retain_loss = retain_objective(task)
        start_norm = float(l1_norm(params).detach())
        step = 0

        def loss() -> torch.Tensor:
            nonlocal step
            gamma = config.gamma * (1 - step / steps)
            step += 1
            return retain_loss() + gamma * l1_norm(params)

        trace = descend(
            task,
            name=self.info.name,
            steps=steps,
            loss_fn=loss,
            lr_scale=config.lr_scale,
            schedule=task.spec.recipe.schedule,
        )
        details = {
            "retain_epochs": round(epochs, 4),
            "lr": task.spec.recipe.lr * config.lr_scale,
            "gamma": config.gamma,
            "l1_norm_start": round(start_norm, 4),
            "l1_norm_end": round(float(l1_norm(params).detach()), 4),
        }
        return finish(task, trace, details)


METHOD = L1Sparse()
