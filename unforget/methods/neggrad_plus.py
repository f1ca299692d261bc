"""neggrad+: descend on the retain loss while ascending, lightly, on the forget loss.

Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (arXiv 2302.09880), the NegGrad+ baseline they introduce:

    min_θ  β · L_R(θ) − (1 − β) · L_F(θ),   L_R, L_F mean cross-entropy on a retain / forget batch

Plain gradient ascent (``neggrad``) has nothing holding the model to R; the retain term does, and
β close to 1 keeps the ascent a gentle push (default β = 0.95). The ascent term's gradient with
respect to the logits is bounded (softmax − one-hot), so the objective can fall without limit
but the steps cannot blow up.

Choices (recorded in the receipt): each forget batch is paired with the next retain batch
(``loop.paired``, both cycled); the length is counted in passes over R (default a tenth of the
recipe's epochs, at least one, as ``finetune``), so the run costs about two fine-tuning passes;
the recipe's optimiser at ``lr_scale`` = 0.25 × its peak lr with a constant rate (papers tune it
per dataset; on a small MLP 0.5× cost 3 points of held-out accuracy on a random 10% and 0.25×
under 1, both removing a whole class completely); no augmentation (the forget term must see the
samples as the model saw them in evaluation); eval mode throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from unforget.methods.base import MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import (
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
class NegGradPlusConfig:
    """Options of ``neggrad+``."""

    beta: float = field(default=0.95, metadata={"help": "weight of the retain loss, in (0, 1)"})
    epochs: float | None = epochs_field()
    lr_scale: float = lr_scale_field(0.25)

    def __post_init__(self) -> None:
        problems = budget_problems(epochs=self.epochs, lr_scale=self.lr_scale)
        if not 0 < self.beta < 1:
            problems.append("beta must be in (0, 1)")
        require(problems)


class NegGradPlus:
    """β·L_R − (1−β)·L_F on paired batches with the recipe's optimiser."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="neggrad+",
        summary="Descend on retain loss, ascend on forget loss: β·L_R − (1−β)·L_F.",
        needs=("forget", "retain"),
        paper="Kurmanji, Triantafillou, Hayes, Triantafillou, Towards Unbounded Machine "
        "Unlearning, NeurIPS 2023, arXiv 2302.09880 (NegGrad+)",
    )
    Config: ClassVar[type] = NegGradPlusConfig

    def run(self, task: UnlearnTask, config: NegGradPlusConfig) -> Outcome:
        epochs = retain_epochs(task, config.epochs)
        steps = steps_for(task.retain, epochs)
        pairs = paired(task.forget, task.retain, steps=steps)
        ce = nn.functional.cross_entropy

        def loss() -> torch.Tensor:
            f_batch, r_batch = next(pairs)
            xf, yf = device_batch(f_batch, task.precision)
            xr, yr = device_batch(r_batch, task.precision)
            retain = ce(task.model(xr).float(), yr)
            forget = ce(task.model(xf).float(), yf)
            return config.beta * retain - (1 - config.beta) * forget

        trace = descend(
            task,
            name=self.info.name,
            steps=steps,
            loss_fn=loss,
            lr_scale=config.lr_scale,
        )
        details = {
            "retain_epochs": round(epochs, 4),
            "beta": config.beta,
            "lr": task.spec.recipe.lr * config.lr_scale,
        }
        return finish(task, trace, details)


METHOD = NegGradPlus()
