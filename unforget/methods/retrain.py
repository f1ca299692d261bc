"""retrain: train a fresh model on the retain set with the original recipe (exact unlearning).

A model trained from scratch on R = train − F (minus earlier deletions) never saw F, so it is
the definition every approximate method is measured against ("gold standard" in every
unlearning paper since Cao & Yang, "Towards Making Systems Forget with Machine Unlearning",
IEEE S&P 2015). It is also the most expensive: ``recipe.epochs`` passes over R. The training goes
through :func:`unforget.training.loop.fit`, the project's one training loop, with the checkpoint's
recipe and the run's seed, so on CPU the result is reproducible bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from unforget.errors import InputError
from unforget.methods.base import MethodInfo, Outcome, UnlearnTask


@dataclass(frozen=True, kw_only=True)
class RetrainConfig:
    """``retrain`` has no options: it reuses the checkpoint's recipe verbatim."""


class Retrain:
    """Exact unlearning: a fresh model trained on R only."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="retrain",
        summary="Train a fresh model on the retain set with the original recipe (exact).",
        needs=("retain", "retrain"),
        paper="Cao & Yang, Towards Making Systems Forget with Machine Unlearning, IEEE S&P 2015 "
        "(retraining from scratch, the exact baseline)",
    )
    Config: ClassVar[type] = RetrainConfig

    def run(self, task: UnlearnTask, config: RetrainConfig) -> Outcome:
        if task.retrain is None:
            raise InputError(
                "retrain needs the checkpoint's training recipe and data, "
                "which this request does not provide"
            )
        fresh = task.retrain()
        recipe = task.spec.recipe
        steps = recipe.epochs * math.ceil(task.n_retain / recipe.batch_size)
        details = {
            "epochs": recipe.epochs,
            "retain_rows": task.n_retain,
            "optimizer": recipe.optimizer,
            "lr": recipe.lr,
            "schedule": recipe.schedule,
            "seed": task.seed,
        }
        return Outcome(model=fresh, steps=steps, stop_reason="retrained", details=details)


METHOD = Retrain()
