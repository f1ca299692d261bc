"""∇τ exactly as published, for comparison with the default method.

Trippa, Campagnano, Bucarelli, Tolomei, Silvestri, "∇τ: Gradient-based and Task-Agnostic
machine Unlearning" (arXiv 2403.14339, 2024). Per step, one forget batch B_F paired with the next
retain batch B_R (the retain iterator restarts when exhausted):

    loss = α · ReLU(τ − L_F)² + (1 − α) · L_R                        (paper, Eq. 2)

with L_F, L_R the mean cross-entropy of the batches and τ the mean loss of the CURRENT model on
held-out reference rows it never trained on, re-measured every ``tau_every`` forget-epochs (5 in
the paper). The authors' defaults for images, none of them tuned here:

* α₀ = (5/3)·p_F (0.5 at 30 % forgetting), decayed linearly to 0: α ← α − α₀/E per forget-epoch;
* AdamW, lr 1e-3, weight decay 0.01, lr decayed linearly from 1.0× to 0.1× over the run;
* the model in eval mode (frozen BatchNorm statistics, no dropout);
* E = ⌊6·|R-batches| / (2·|F-batches|)⌋ forget-epochs, capped at 80 (about three retain epochs).

For their text experiments the authors use α₀ = 0.5 and lr 3e-4 (``--set alpha0=0.5
--set lr=0.0003``). There is no early stop and no target other than the mean: the failure modes
this has on heavy-tailed or well-generalising models (methods.md) are the point of keeping it.
The tool-wide guard rails (non-finite loss, retain-accuracy floor) still apply, at the guard's
checks (the only host reads of the loss). Steps go through
:class:`~unforget.training.step.TrainStep` (gradients averaged across ranks under ``torchrun``;
τ is averaged across ranks, so every rank uses the same one).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from unforget.methods.base import MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import (
    Guard,
    adamw_step,
    checked_loss,
    device_batch,
    freeze_batchnorm,
    mean_loss,
    paired,
    require,
    require_reference,
    resident,
)
from unforget.runtime import distributed
from unforget.runtime.progress import Tick


@dataclass(frozen=True, kw_only=True)
class PaperConfig:
    """Options of ``nabla-tau-paper``: the authors' image defaults."""

    lr: float = field(default=1e-3, metadata={"help": "AdamW lr (3e-4 for pretrained text)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    lr_end: float = field(default=0.1, metadata={"help": "final lr as a fraction of lr"})
    alpha0: float | None = field(
        default=None, metadata={"help": "start weight of the forget term; None: (5/3)·p_F"}
    )
    max_forget_epochs: int = field(default=80, metadata={"help": "cap on E"})
    tau_every: int = field(default=5, metadata={"help": "forget-epochs between τ measurements"})

    def __post_init__(self) -> None:
        problems = []
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append("lr must be > 0 and weight_decay >= 0")
        if not 0 < self.lr_end <= 1:
            problems.append("lr_end must be in (0, 1]")
        if self.alpha0 is not None and not 0 < self.alpha0 < 1:
            problems.append("alpha0 must be in (0, 1)")
        if self.max_forget_epochs < 1 or self.tau_every < 1:
            problems.append("max_forget_epochs and tau_every must be >= 1")
        require(problems)


def paper_forget_epochs(retain_batches: int, forget_batches: int, *, cap: int) -> int:
    """E = ⌊6·|R-batches| / (2·|F-batches|)⌋, in [1, cap]."""
    return max(1, min(cap, math.floor(6 * retain_batches / (2 * max(forget_batches, 1)))))


PAPER = (
    "Trippa et al., ∇τ: Gradient-based and Task-Agnostic machine Unlearning, "
    "arXiv 2403.14339 (2024)"
)


def paper_loss(
    forget_loss: torch.Tensor, retain_loss: torch.Tensor, *, tau: float, alpha: float
) -> torch.Tensor:
    """α · ReLU(τ − L_F)² + (1 − α) · L_R (Eq. 2)."""
    return alpha * torch.relu(tau - forget_loss).pow(2) + (1 - alpha) * retain_loss


class NablaTauPaper:
    """The published ∇τ loop with the authors' defaults."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="nabla-tau-paper",
        summary="∇τ as published: ascent on forget data up to the mean held-out loss, fixed "
        "length.",
        needs=("forget", "retain", "reference"),
        paper=PAPER,
    )
    Config: ClassVar[type] = PaperConfig

    def run(self, task: UnlearnTask, config: PaperConfig) -> Outcome:
        reference = resident(require_reference(task, self.info.name))  # read at every τ
        model = task.model
        freeze_batchnorm(model)
        f_batches = len(task.forget)
        epochs = paper_forget_epochs(len(task.retain), f_batches, cap=config.max_forget_epochs)
        plan = epochs * f_batches
        alpha0 = config.alpha0 if config.alpha0 is not None else 5 / 3 * task.forget_fraction
        alpha0 = min(alpha0, 0.999)
        train_step = adamw_step(task, model, lr=config.lr, weight_decay=config.weight_decay)
        optimizer = train_step.optimizer
        guard = Guard(model, resident(task.retain_eval), task.precision, task.guard)
        guard.start()
        taus: list[float] = []
        started = time.perf_counter()
        step = 0
        for step, (f_batch, r_batch) in enumerate(paired(task.forget, task.retain, steps=plan), 1):
            epoch = (step - 1) // f_batches
            if (step - 1) % f_batches == 0 and epoch % config.tau_every == 0:
                # the same held-out rows on every rank; agreed so all use one τ
                taus.append(distributed.agreed(mean_loss(model, reference, task.precision))[0])
            alpha = alpha0 * (1 - epoch / epochs)
            progress = (step - 1) / plan
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1 - (1 - config.lr_end) * progress)
            xf, yf = device_batch(f_batch, task.precision)
            xr, yr = device_batch(r_batch, task.precision)
            train_step(functools.partial(self._loss, model, xf, yf, xr, yr, taus[-1], alpha))
            if step % task.guard.check_every == 0:  # the only host syncs
                checked_loss(train_step, guard, step=step, method=self.info.name)
                guard.check(step=step, method=self.info.name)
            task.on_progress(Tick(self.info.name, step, plan, {"alpha": alpha}))
        checked_loss(train_step, guard, step=step, method=self.info.name)
        return Outcome(
            model=model,
            steps=step,
            stop_reason="plan_complete",
            details={
                "alpha0": round(alpha0, 6),
                "forget_epochs": epochs,
                "planned_steps": plan,
                "tau_history": [round(t, 6) for t in taus],
                "weight_decay": config.weight_decay,
                "loop_seconds": round(time.perf_counter() - started, 3),
            },
        )

    @staticmethod
    def _loss(
        model: nn.Module,
        xf: torch.Tensor,
        yf: torch.Tensor,
        xr: torch.Tensor,
        yr: torch.Tensor,
        tau: float,
        alpha: float,
    ) -> torch.Tensor:
        """Eq. 2 on one forget and one retain batch (two forward passes, as published)."""
        forget_loss = nn.functional.cross_entropy(model(xf).float(), yf)
        retain_loss = nn.functional.cross_entropy(model(xr).float(), yr)
        return paper_loss(forget_loss, retain_loss, tau=tau, alpha=alpha)


METHOD = NablaTauPaper()
