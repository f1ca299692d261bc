"""salun: random-label unlearning restricted to the weights most salient for the forget set.

Fan, Liu, Zhang, Wei, Wong, Liu, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024 (arXiv 2310.12508).

Weight saliency from the forget loss at the original weights θ_o,

    m_S = 1( |∇_θ L_F(θ)|_{θ=θ_o}| ≥ γ ),   L_F = mean_{(x,y)∈F} ℓ(x, y; θ)

with γ the median of all saliency values (the paper's default: half the weights are salient),
then the random-label objective of ``random-label`` optimised over the salient weights only:

    θ_u = m_S ⊙ (θ_o + Δθ) + (1 − m_S) ⊙ θ_o.

Choices where the paper leaves room (recorded in the receipt):

* The threshold is global: one γ over all trainable parameters together, as the paper's single
  hard threshold reads (per-tensor thresholds would force every layer to change equally, while
  saliency is meant to find the layers F lives in). ``fraction`` is met exactly by a top-k
  selection, so ties at γ (e.g. many zero gradients from dead units) cannot inflate the mask.
* ∇L_F is the gradient of the mean loss over the whole forget set, in the unshuffled evaluation
  order, so the mask is reproducible and its SHA-256 (in the receipt) can be recomputed. Under
  torchrun every rank computes it over all of F and the saliencies are averaged across ranks,
  so all ranks hold the same mask.
* θ_u is enforced literally: after every optimiser step the non-salient weights are copied back
  from θ_o. That keeps them bit-identical whatever the optimiser does (AdamW's decoupled weight
  decay and SGD momentum would otherwise move them even with their gradients zeroed).
* Everything else (length, learning rate, retain weight, wrong-label draws) is ``random-label``'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from unforget.methods.base import Loader, MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import (
    budget_problems,
    descend,
    device_batch,
    epochs_field,
    finish,
    freeze_batchnorm,
    lr_scale_field,
    require,
    retain_epochs,
    steps_for,
)
from unforget.methods.random_label import relabel_objective
from unforget.runtime import distributed
from unforget.runtime.device import Precision

Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor of the parameter's shape


@dataclass(frozen=True, kw_only=True)
class SalUnConfig:
    """Options of ``salun``."""

    fraction: float = field(default=0.5, metadata={"help": "share of weights that are salient"})
    retain_weight: float = field(default=1.0, metadata={"help": "ρ, weight of the retain loss"})
    epochs: float | None = epochs_field()
    lr_scale: float = lr_scale_field(0.5)

    def __post_init__(self) -> None:
        problems = budget_problems(epochs=self.epochs, lr_scale=self.lr_scale)
        if not 0 < self.fraction <= 1:
            problems.append("fraction must be in (0, 1]")
        if not 0 <= self.retain_weight <= 100:
            problems.append("retain_weight must be in [0, 100]")
        require(problems)


def forget_saliency(
    model: nn.Module, loader: Loader, precision: Precision
) -> dict[str, torch.Tensor]:
    """|∇_θ L_F| at the current weights, L_F the mean loss over every row of ``loader``.

    Batch gradients of Σ ℓ / n accumulate in ``.grad`` (cleared afterwards); the fp16 loss scale,
    if any, is divided out.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    rows = len(loader.dataset)  # type: ignore[arg-type]
    scaler = precision.scaler()
    model.zero_grad(set_to_none=True)
    for batch in loader:
        x, y = device_batch(batch, precision)
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y, reduction="sum") / rows
        scaler.scale(loss).backward()
    inverse = 1.0 / scaler.get_scale()
    saliency = {
        name: p.grad.detach().float().abs() * inverse
        if p.grad is not None
        else torch.zeros_like(p, dtype=torch.float32)
        for name, p in params.items()
    }
    model.zero_grad(set_to_none=True)
    return saliency


def saliency_mask(
    model: nn.Module, loader: Loader, precision: Precision, *, fraction: float
) -> Mask:
    """m_S: True for the ``fraction`` of weights with the largest |∇_θ L_F| (global top-k)."""
    saliency = forget_saliency(model, loader, precision)
    # every rank read every forget row (an evaluation loader); averaging makes the mask the
    # same on all ranks even where the backward is not bit-reproducible (GPU atomics)
    flat = distributed.average(torch.cat([s.flatten() for s in saliency.values()]))
    k = max(1, round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    masks, offset = {}, 0
    for name, s in saliency.items():
        masks[name] = chosen[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return masks


def mask_digest(mask: Mask) -> str:
    """SHA-256 of the mask's bits in parameter order (lets a receipt be checked against it)."""
    digest = hashlib.sha256()
    for name in sorted(mask):
        digest.update(name.encode())
        digest.update(np.packbits(mask[name].flatten().cpu().numpy()).tobytes())
    return digest.hexdigest()


def keep_outside(model: nn.Module, mask: Mask) -> Callable[[], None]:
    """A callback that copies θ_o back wherever the mask is False (θ_u of the paper)."""
    params = dict(model.named_parameters())
    original = {name: params[name].detach().clone() for name in mask}

    @torch.no_grad()
    def restore() -> None:
        for name, keep in mask.items():
            params[name].copy_(torch.where(keep, params[name], original[name]))

    return restore


class SalUn:
    """Saliency mask from ∇L_F, then random-label unlearning of the salient weights only."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="salun",
        summary="Random-label unlearning of the weights most salient to the forget loss.",
        needs=("forget", "retain"),
        paper="Fan, Liu, Zhang, Wei, Wong, Liu, SalUn: Empowering Machine Unlearning via "
        "Gradient-based Weight Saliency, ICLR 2024, arXiv 2310.12508",
    )
    Config: ClassVar[type] = SalUnConfig

    def run(self, task: UnlearnTask, config: SalUnConfig) -> Outcome:
        freeze_batchnorm(task.model)
        mask = saliency_mask(task.model, task.forget_eval, task.precision, fraction=config.fraction)
        epochs = retain_epochs(task, config.epochs)
        steps = steps_for(task.retain, epochs)
        loss = relabel_objective(task, retain_weight=config.retain_weight, steps=steps)
        trace = descend(
            task,
            name=self.info.name,
            steps=steps,
            loss_fn=loss,
            lr_scale=config.lr_scale,
            after_step=keep_outside(task.model, mask),
        )
        salient = sum(int(m.sum()) for m in mask.values())
        total = sum(m.numel() for m in mask.values())
        details = {
            "retain_epochs": round(epochs, 4),
            "lr": task.spec.recipe.lr * config.lr_scale,
            "salient_parameters": salient,
            "total_parameters": total,
            "mask_sha256": mask_digest(mask),
        }
        return finish(task, trace, details)


METHOD = SalUn()
