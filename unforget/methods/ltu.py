"""LTU: Learning to Unlearn (Huang, Foo, Liu; arXiv 2407.10494, 2024).

Idea (the paper's method section): treat unlearning as meta-learning, so that each forgetting
step is chosen for how well it generalises — to forget samples it was not computed on, and to
the retain knowledge seen through only a SMALL retain subset R̂ — and harmonise the forgetting
and remembering gradients where they conflict. One iteration, in our notation (equation
numbers are ours: the paper's are not quoted because its method section could not be checked
against a stored copy):

    (1) meta-tune    θ' = θ − α ∇_θ L_mem(θ; B_F, V)                 virtual step, support B_F
    (2) meta-test    L_rem(θ'; B_R̂)  and  L_mem(θ'; B_F', V)         query B_F', retain B_R̂
    (3) meta-update  g_f = ∇_θ [L_mem(θ; B_F, V) + L_mem(θ'; B_F', V)],  g_r = ∇_θ λ·L_rem(θ')
    (4) harmonise    (g_r', g_f') = harmonize(g_r, g_f);   θ ← θ − lr · (g_r' + g_f')

``θ'`` is built with :func:`torch.func.functional_call` from a gradient taken with
``create_graph=True``, so (3) is SECOND order (exact); ``first_order=true`` detaches it, as
first-order MAML does, for models where double backward is too costly. The query batch B_F'
comes from an independent shuffle of F (a step is good when it also forgets samples it was not
computed on); (3) is MLDG-style (train + test objective). Gradient Harmonization (4) is
:func:`harmonize` (PCGrad-style), exposed as a pure function on flat vectors.

Choices where the paper leaves room, and why:

- Membership signal (the paper trains K differentiable membership-inference models on an
  audit set): ``L_mem`` is the distance between the logit margins ``m = z_y − max_{j≠y} z_j``
  of a forget batch and those of a batch V of held-out reference rows under the CURRENT model
  (no gradient through V, re-measured every step): sorted forget margins against the
  reference quantiles at the same levels, Huber loss (δ = ``huber_delta``). When the two
  distributions match, no threshold attack on the margin (or on loss or confidence, its
  near-monotone cousins) tells forget from held-out rows — the quantity the audit tests —
  without training attackers (no shadow data, no attacker variance). The margin does not
  saturate like ``p_y``, and ``m > 0`` exactly when the prediction is right, so matching
  margins drives forget accuracy to the held-out level, the stop rule's target. It pulls
  margins up as well as down (it cannot run away) and is robust to heavy tails (quantiles are
  paired, Huber caps each sample's pull).
- Remembering loss: KL from the ORIGINAL model's predictions on R̂ (``remember="ce"`` for
  cross-entropy on labels). Near a memorising optimum the cross-entropy gradient on retained
  rows vanishes, while KL keeps the retained function where it was.
- R̂ = ``retain_fraction`` (10 %) of R, at most ``retain_cap`` rows, drawn with the run's seed.
- Step sizes in units of curvature (measured: a fixed α = 0.1 made ``(I − α∇²L_mem)`` amplify
  the meta-gradient 30-fold and wrecked the model in five steps): ``λ_max`` of ``∇²L_mem`` is
  estimated by power iteration on one forget batch and ``α = inner_scale/λ_max``; the SGD lr
  of (4) is calibrated on the first step so the update moves θ by ``relative_step`` of ‖θ‖,
  and never exceeds ``lr_scale/λ_max(∇²(L_mem + λ·L_rem))`` (plain gradient descent is stable
  below 2/λ_max). Plain SGD keeps (4)'s direction: Adam would re-scale it per coordinate.
- Length and stop: at most ``⌊budget·|R|/|F|⌋`` forget epochs (capped); after each, forget
  accuracy is compared with reference accuracy (:class:`~unforget.methods.pgu.ReferenceStop`:
  stop once it is at or below, keeping the closer of the last two epochs, or once reference
  accuracy has fallen ``max_reference_drop`` below its start).
- Mixed precision: bf16 autocast where the device has it; on fp16-only GPUs the run is fp32,
  since loss scaling through a virtual step is fragile.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from unforget.methods.base import Loader, MethodInfo, Outcome, UnlearnTask
from unforget.methods.common import (
    ReferenceStop,
    autocast,
    capped_lr,
    curvature,
    forget_epochs,
    global_gradient,
    stop_problems,
    stopped_outcome,
)
from unforget.methods.loop import (
    Guard,
    cycle,
    device_batch,
    freeze_batchnorm,
    require,
    require_reference,
)
from unforget.runtime.device import Precision
from unforget.runtime.distributed import average, shard_sampler
from unforget.runtime.progress import Tick
from unforget.training.step import TrainStep, optimizer_for


@dataclass(frozen=True, kw_only=True)
class LtuConfig:
    """Options of ``ltu`` (``--set key=value``)."""

    lr: float | None = field(
        default=None, metadata={"help": "SGD lr of the meta-update; None: calibrated, see below"}
    )
    relative_step: float = field(
        default=0.002, metadata={"help": "calibrated lr: first update moves θ by this share of ‖θ‖"}
    )
    lr_scale: float = field(
        default=1.0,
        metadata={"help": "calibrated lr never exceeds lr_scale / λ_max(∇²(L_mem + λ·L_rem))"},
    )
    inner_lr: float | None = field(
        default=None, metadata={"help": "α of the virtual step; None: inner_scale / λ_max"}
    )
    inner_scale: float = field(
        default=0.1, metadata={"help": "calibrated α as a share of the inner problem's 1/λ_max"}
    )
    power_iterations: int = field(
        default=10, metadata={"help": "Hessian-vector products to estimate λ_max"}
    )
    remember: Literal["kl", "ce"] = field(
        default="kl", metadata={"help": "remembering loss on R̂: KL to the original model, CE"}
    )
    remember_weight: float = field(
        default=1.0, metadata={"help": "λ: weight of the remembering loss at θ'"}
    )
    retain_fraction: float = field(
        default=0.1, metadata={"help": "share of R in the small retain subset R̂"}
    )
    retain_cap: int = field(default=5000, metadata={"help": "rows: upper bound on |R̂|"})
    huber_delta: float = field(
        default=1.0, metadata={"help": "logits: Huber threshold of the margin matching"}
    )
    first_order: bool = field(
        default=False,
        metadata={"help": "drop second-order terms through θ' (cheaper, approximate)"},
    )
    budget: float = field(
        default=1.0, metadata={"help": "forget epochs = ⌊budget·|R|/|F|⌋, capped by max_epochs"}
    )
    max_epochs: int = field(default=30, metadata={"help": "cap on forget epochs"})
    max_reference_drop: float = field(
        default=0.03, metadata={"help": "stop if reference accuracy falls this far below start"}
    )

    def __post_init__(self) -> None:
        problems = []
        for name in ("relative_step", "lr_scale", "inner_scale", "huber_delta", "budget"):
            if getattr(self, name) <= 0.0:
                problems.append(f"{name} must be > 0")
        if self.lr is not None and self.lr <= 0.0:
            problems.append("lr must be > 0 (or none to calibrate it)")
        if self.inner_lr is not None and self.inner_lr <= 0.0:
            problems.append("inner_lr must be > 0 (or none to calibrate it)")
        if self.power_iterations < 1:
            problems.append("power_iterations must be >= 1")
        if self.remember_weight < 0.0:
            problems.append("remember_weight must be >= 0")
        if not 0.0 < self.retain_fraction <= 1.0:
            problems.append("retain_fraction must be in (0, 1]")
        if self.retain_cap < 1:
            problems.append("retain_cap must be >= 1")
        problems += stop_problems(
            max_epochs=self.max_epochs, max_reference_drop=self.max_reference_drop
        )
        require(problems)


def harmonize(g_r: torch.Tensor, g_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient Harmonization on flat gradients: the remembering and forgetting directions.

    When ``g_r · g_f < 0`` each loses its component along the other (PCGrad-style, both
    against the ORIGINAL vectors)::

        g_f' = g_f − (g_f·g_r / ‖g_r‖²) g_r        g_r' = g_r − (g_r·g_f / ‖g_f‖²) g_f

    so ``g_f'·g_r = g_r'·g_f = 0``, and the sum ``g_r' + g_f'`` has a non-negative inner product
    with both originals (``g_r'·g_r ≥ 0`` by Cauchy–Schwarz). Otherwise both are unchanged.
    The projections are computed in float64 and returned in the inputs' dtype.
    """
    r, f = g_r.double(), g_f.double()
    dot = torch.dot(r, f)
    tiny = torch.finfo(torch.float64).tiny
    r_new = r - dot / torch.dot(f, f).clamp_min(tiny) * f
    f_new = f - dot / torch.dot(r, r).clamp_min(tiny) * r
    conflict = dot < 0  # chosen on the device: no host sync per step
    return (
        torch.where(conflict, r_new.to(g_r.dtype), g_r),
        torch.where(conflict, f_new.to(g_f.dtype), g_f),
    )


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{j≠y} z_j`` per row (float32): positive exactly when the prediction is right."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def membership_gap(
    forget_margins: torch.Tensor, reference: torch.Tensor, *, delta: float
) -> torch.Tensor:
    """Huber distance between sorted forget margins and the reference quantiles at the same
    levels ``(i + ½)/n``; ``reference`` is a sorted constant (no gradient)."""
    n = forget_margins.shape[0]
    levels = (torch.arange(n, device=reference.device, dtype=reference.dtype) + 0.5) / n
    target = torch.quantile(reference, levels)
    ordered = torch.sort(forget_margins).values
    return nn.functional.huber_loss(ordered, target, delta=delta)


def retain_subset(task: UnlearnTask, *, fraction: float, cap: int) -> Loader:
    """A shuffled loader over ``min(cap, ⌈fraction·|R|⌉)`` retain rows drawn with the seed."""
    dataset = task.retain.dataset
    total = len(cast(Sized, dataset))
    size = max(1, min(cap, math.ceil(fraction * total), total))
    rng = np.random.default_rng(task.seed)
    rows = np.sort(rng.choice(total, size=size, replace=False)).tolist()
    subset = torch.utils.data.Subset(dataset, rows)
    sampler = shard_sampler(subset, seed=task.seed)  # this rank's share under torchrun
    return torch.utils.data.DataLoader(
        subset,
        batch_size=task.retain.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(task.seed),
        collate_fn=task.retain.collate_fn,
        pin_memory=task.precision.device.type == "cuda",
    )


def flat(grads: tuple[torch.Tensor | None, ...], params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


class Ltu:
    info: ClassVar[MethodInfo] = MethodInfo(
        name="ltu",
        summary="Meta-learned forgetting steps on a small retain subset, harmonised gradients",
        needs=("forget", "retain", "reference"),
        paper="Huang, Foo, Liu. Learning to Unlearn for Robust Machine Unlearning. "
        "arXiv 2407.10494 (2024)",
    )
    Config: ClassVar[type] = LtuConfig

    def run(self, task: UnlearnTask, config: LtuConfig) -> Outcome:
        model = task.model
        freeze_batchnorm(model)
        before = copy.deepcopy(model.state_dict())
        subset = retain_subset(task, fraction=config.retain_fraction, cap=config.retain_cap)
        stop = ReferenceStop(model, task, max_drop=config.max_reference_drop)
        details: dict[str, Any] = {
            "retain_subset": len(cast(Sized, subset.dataset)),
            "order": "first" if config.first_order else "second",
            "conflicts": 0,
        }
        steps = 0
        if not stop.measure(0):
            steps = _meta_loop(task, config, subset, stop, details)
        return stopped_outcome(model, before, steps=steps, stop=stop, details=details)


def _meta_loop(
    task: UnlearnTask,
    config: LtuConfig,
    subset: Loader,
    stop: ReferenceStop,
    details: dict[str, Any],
) -> int:
    """Meta-tune / meta-test / meta-update over forget epochs; returns the steps taken."""
    model, precision = task.model, task.precision
    meta = MetaStep.create(model, config, precision)
    retain_it, query_it = cycle(subset), cycle(task.forget)
    reference_it = cycle(require_reference(task, "ltu"))
    forget0, reference0 = (
        device_batch(next(query_it), precision),
        device_batch(next(reference_it), precision),
    )
    # under torchrun: the curvature of the global first batches, the same on every rank
    curvature_f = meta.curvature(forget0, reference0)
    curvature_t = meta.curvature(forget0, reference0, device_batch(next(retain_it), precision))
    meta.inner_lr = config.inner_lr or config.inner_scale / curvature_f
    lr, stable_lr = config.lr, config.lr_scale / curvature_t
    details.update(
        curvature_forget=curvature_f, curvature_total=curvature_t, inner_lr=meta.inner_lr
    )
    optimizer = optimizer_for("sgd", meta.params, lr=lr or 0.0, eager=not precision.compile)
    # fp32 where fp16 would need loss scaling; gradients are averaged below, before harmonising
    train_step = TrainStep(model, optimizer, precision=precision, scale=False, sync=False)
    conflicts = torch.zeros((), dtype=torch.int64, device=precision.device)
    guard = Guard(model, task.retain_eval, precision, task.guard)
    guard.start()
    epochs = forget_epochs(task, budget=config.budget, max_epochs=config.max_epochs)
    total = epochs * len(task.forget)
    step = 0
    for epoch in range(1, epochs + 1):
        for batch in task.forget:
            g_r, g_f, value = meta.gradients(
                device_batch(batch, precision),
                device_batch(next(query_it), precision),
                device_batch(next(retain_it), precision),
                device_batch(next(reference_it), precision),
            )
            g_r, g_f = average(g_r), average(g_f)  # the global batch's meta-gradients
            conflicts += torch.dot(g_r, g_f) < 0
            r, f = harmonize(g_r, g_f)
            set_grads(meta.params, r + f)
            if lr is None:
                lr = capped_lr(meta.params, config.relative_step, stable_lr)
                optimizer.param_groups[0]["lr"] = details["lr"] = lr or 0.0
            train_step.update()
            train_step.track(value)
            step += 1
            if step % task.guard.check_every == 0:
                _check_loss(train_step, guard, step)
                guard.check(step=step, method="ltu")
            task.on_progress(Tick("ltu", step, total, {"loss": train_step.last}))
        _check_loss(train_step, guard, step)
        details["conflicts"] = int(conflicts)
        if stop.measure(epoch):
            break
    return step


def _check_loss(train_step: TrainStep, guard: Guard, step: int) -> None:
    value, finite = train_step.flush()
    guard.check_loss(value if finite else float("nan"), step=step, method="ltu")


Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MetaStep:
    """The three LTU phases for one iteration, on the model's trainable parameters."""

    model: nn.Module
    teacher: nn.Module
    names: list[str]
    params: list[nn.Parameter]
    config: LtuConfig
    precision: Precision
    inner_lr: float | None

    @classmethod
    def create(cls, model: nn.Module, config: LtuConfig, precision: Precision) -> MetaStep:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        return cls(
            model=model,
            teacher=teacher,
            names=[n for n, _ in named],
            params=[p for _, p in named],
            config=config,
            precision=precision,
            inner_lr=config.inner_lr,
        )

    def forgetting(
        self, logits: torch.Tensor, y: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        return membership_gap(margins(logits, y), reference, delta=self.config.huber_delta)

    def remembering(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.config.remember == "ce":
            return nn.functional.cross_entropy(logits.float(), y)
        with torch.no_grad():
            target = torch.log_softmax(self.teacher(x).float(), dim=1)
        return nn.functional.kl_div(
            torch.log_softmax(logits.float(), dim=1), target, log_target=True, reduction="batchmean"
        )

    def curvature(self, forget: Pair, reference: Pair, retain: Pair | None = None) -> float:
        """λ_max of the Hessian of the forgetting loss on one forget batch, plus ``λ`` times
        the remembering loss on ``retain`` when given (power iteration, at θ)."""
        with autocast(self.precision):
            target = self.reference(reference)
            loss = self.forgetting(self.model(forget[0]), forget[1], target)
            if retain is not None:
                loss = loss + self.config.remember_weight * self.remembering(
                    self.model(retain[0]), retain[0], retain[1]
                )
        return curvature(loss, self.params, iterations=self.config.power_iterations)

    @torch.no_grad()
    def reference(self, batch: Pair) -> torch.Tensor:
        return torch.sort(margins(self.model(batch[0]), batch[1])).values

    def gradients(
        self, support: Pair, query: Pair, retain: Pair, reference: Pair
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(g_r, g_f, loss)``: flat remembering and forgetting meta-gradients and the
        (detached) meta-objective."""
        alpha, order2 = float(self.inner_lr or 0.0), not self.config.first_order
        with autocast(self.precision):
            target = self.reference(reference)
            tune = self.forgetting(self.model(support[0]), support[1], target)
            inner = global_gradient(  # θ' of the global support batch under torchrun
                torch.autograd.grad(
                    tune, self.params, allow_unused=True, retain_graph=True, create_graph=order2
                )
            )
            fast = {
                n: p if g is None else p - alpha * g
                for n, p, g in zip(self.names, self.params, inner, strict=True)
            }
            test = self.forgetting(functional_call(self.model, fast, (query[0],)), query[1], target)
            remember = self.remembering(
                functional_call(self.model, fast, (retain[0],)), retain[0], retain[1]
            )
        g_f = flat(
            torch.autograd.grad(tune + test, self.params, retain_graph=True, allow_unused=True),
            self.params,
        )
        g_r = flat(
            torch.autograd.grad(
                self.config.remember_weight * remember, self.params, allow_unused=True
            ),
            self.params,
        )
        return g_r, g_f, (tune + test + remember).detach()


def set_grads(params: list[nn.Parameter], vector: torch.Tensor) -> None:
    """Write a flat gradient back into ``p.grad`` of each parameter (inverse of :func:`flat`)."""
    offset = 0
    for p in params:
        p.grad = vector[offset : offset + p.numel()].reshape(p.shape).clone()
        offset += p.numel()


METHOD = Ltu()
