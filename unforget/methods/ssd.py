"""ssd: selective synaptic dampening, a one-shot edit of the weights that matter to F alone.

Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening", AAAI 2024 (arXiv 2308.07707). With []_D and []_F the diagonal of the Fisher
information (importance of each parameter) on the full training data D and on the forget set F,
each parameter θ_i is dampened when F alone depends on it much more than D does:

    θ_i ← β_i θ_i   if []_{F,i} > α []_{D,i}      (selection)
    β_i = min(λ []_{D,i} / []_{F,i}, 1)            (dampening)

and left bit-identical otherwise. There are no gradient steps: the cost is one forward-backward
pass over D (about a third of one training epoch's work is saved by skipping the update), far
under retraining. λ = 1 is the paper's default.

Choices where the paper leaves room (recorded in the receipt):

* α. The paper's α = 10 was set on forget sets of about 1% of D. Because D contains F, with
  p the forget share of D, []_D = p·[]_F + (1 − p)·[]_R ≥ p·[]_F, so for p ≥ 1/α nothing can
  ever be selected (a 10% class removal with α = 10 is a no-op). The default ``alpha = None``
  uses α = ρ / (1 + (ρ − 1)·p) with ρ = ``ratio`` = 10, which is exactly the criterion
  []_F > ρ·[]_R for every p and tends to the paper's α = 10 as p → 0. An explicit ``alpha``
  is used as given.
* Importance: []_i = mean over batches of (∂L_B/∂θ_i)², the squared gradient of each batch's
  mean cross-entropy (the empirical Fisher at batch granularity, as cheap as training).
  Per-sample squares would cost a backward pass per sample; both importances use the recipe's
  batch size, so the batch-size scaling of the variance term is the same on both sides.
* D = all training data the model saw = R ∪ F: []_D is the batch-count-weighted mean of the
  retain and forget importances (p above is the forget share of batches), so F's pass is not
  repeated.
* Eval mode (frozen BatchNorm, no dropout); the forward runs under the run's autocast and the
  AMP scaler, whose scale is divided out before squaring.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from unforget.device import Precision
from unforget.errors import GuardRailError
from unforget.methods.base import Loader, MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import device_batch, freeze_batchnorm
from unforget.progress import Tick


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``ssd``."""

    alpha: float | None = field(
        default=None,
        metadata={"help": "selection: dampen where []_F > alpha·[]_D; default from ratio"},
    )
    ratio: float = field(
        default=10.0, metadata={"help": "ρ of the default alpha: select where []_F > ρ·[]_R"}
    )
    lam: float = field(default=1.0, metadata={"help": "dampening: β = min(lam·[]_D/[]_F, 1)"})

    def __post_init__(self) -> None:
        problems = []
        if self.alpha is not None and not self.alpha > 0:
            problems.append("alpha must be > 0")
        if not self.ratio >= 1:
            problems.append("ratio must be >= 1")
        if not self.lam > 0:
            problems.append("lam must be > 0")
        if problems:
            raise ValueError("; ".join(problems))


def default_alpha(ratio: float, forget_share: float) -> float:
    """α = ρ / (1 + (ρ − 1)·p): with []_D = p·[]_F + (1 − p)·[]_R, []_F > α·[]_D ⇔ []_F > ρ·[]_R."""
    return ratio / (1 + (ratio - 1) * forget_share)


@dataclass(frozen=True)
class Importances:
    """Diagonal Fisher estimates per parameter name, and F's share of the batches of D."""

    forget: dict[str, torch.Tensor]  # []_F
    full: dict[str, torch.Tensor]  # []_D
    forget_share: float  # p


def batch_gradients(model: nn.Module, loader: Loader,
                    precision: Precision) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Per batch of ``loader``: ∇_θ of the batch-mean cross-entropy, fp32, AMP scale removed.

    Yields (parameter name -> gradient, rows in the batch); a parameter the loss does not reach
    gets zeros. The model's ``.grad`` fields are cleared afterwards.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    scaler = precision.scaler()
    for batch in loader:
        x, y = device_batch(batch, precision)
        model.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        inverse = 1.0 / scaler.get_scale()
        grads = {name: (p.grad.detach().float() * inverse if p.grad is not None
                        else torch.zeros_like(p, dtype=torch.float32))
                 for name, p in params.items()}
        yield grads, len(y)
    model.zero_grad(set_to_none=True)


def squared_gradient_sum(model: nn.Module, loader: Loader,
                         precision: Precision) -> tuple[dict[str, torch.Tensor], int]:
    """Σ over batches of (∇_θ L_B)², and the number of batches (divide for the mean)."""
    total: dict[str, torch.Tensor] = {}
    count = 0
    for grads, _ in batch_gradients(model, loader, precision):
        for name, grad in grads.items():
            if name in total:
                total[name].add_(grad.square())
            else:
                total[name] = grad.square()
        count += 1
    return total, count


def dampening_factors(forget: torch.Tensor, full: torch.Tensor, *, alpha: float,
                      lam: float) -> torch.Tensor:
    """The SSD multipliers: β_i = min(λ·full_i / forget_i, 1) where forget_i > α·full_i, else 1.

    Args:
        forget: []_F, importances on the forget set (any shape, ≥ 0).
        full: []_D, importances on all training data (same shape, ≥ 0).
    Returns:
        Multipliers of the same shape in [0, 1]; exactly 1.0 where a parameter is not selected,
        so multiplying by them leaves unselected parameters bit-identical.
    """
    selected = forget > alpha * full
    beta = torch.clamp(lam * full / forget.clamp_min(torch.finfo(forget.dtype).tiny), max=1.0)
    return torch.where(selected, beta, torch.ones_like(beta))


def importances(model: nn.Module, task: UnlearnTask) -> Importances:
    """[]_F and []_D per parameter: mean squared batch gradients on F and on D = R ∪ F.

    Raises:
        GuardRailError: an importance is not finite (fp16 overflow); nothing was changed.
    """
    forget_sum, n_forget = squared_gradient_sum(model, task.forget, task.precision)
    task.on_progress(Tick("ssd", 1, 2, {}))
    retain_sum, n_retain = squared_gradient_sum(model, task.retain, task.precision)
    task.on_progress(Tick("ssd", 2, 2, {}))
    forget = {name: total / max(n_forget, 1) for name, total in forget_sum.items()}
    full = {
        name: (total + retain_sum[name]) / max(n_forget + n_retain, 1)
        for name, total in forget_sum.items()
    }
    for name in forget:
        if not (torch.isfinite(forget[name]).all() and torch.isfinite(full[name]).all()):
            raise GuardRailError(
                f"ssd: non-finite importance for {name!r} (fp16 overflow?); "
                "nothing was written (try again without AMP)"
            )
    return Importances(forget, full, n_forget / max(n_forget + n_retain, 1))


class SelectiveSynapticDampening:
    """Fisher importances on F and on D, then the one-shot dampening rule."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name="ssd",
        summary="Dampen weights far more important to the forget set than to all training data.",
        needs=("forget", "retain"),
        paper="Foster, Schoepf, Brintrup, Fast Machine Unlearning Without Retraining Through "
        "Selective Synaptic Dampening, AAAI 2024, arXiv 2308.07707",
    )
    Config: ClassVar[type] = Config

    def run(self, task: UnlearnTask, config: Config) -> Outcome:
        model = task.model
        freeze_batchnorm(model)
        params = dict(model.named_parameters())
        scores = importances(model, task)
        alpha = config.alpha or default_alpha(config.ratio, scores.forget_share)
        selected = dampened = total = 0
        with torch.no_grad():
            for name, forget in scores.forget.items():
                full = scores.full[name]
                factors = dampening_factors(forget, full, alpha=alpha, lam=config.lam)
                params[name].mul_(factors.to(params[name].dtype))
                selected += int((forget > alpha * full).sum())
                dampened += int((factors < 1).sum())
                total += factors.numel()
        details = {
            "alpha": round(alpha, 6),
            "forget_share": round(scores.forget_share, 6),
            "selected_parameters": selected,
            "dampened_parameters": dampened,
            "total_parameters": total,
        }
        return Outcome(
            model=model,
            steps=0,
            stop_reason="dampened",
            details=details,
            weights_changed=dampened > 0,
        )


METHOD = SelectiveSynapticDampening()
