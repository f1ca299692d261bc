"""LTU: Learning to Unlearn (Huang, Foo, Liu; arXiv 2407.10494, 2024).

Idea (the paper's §3): treat unlearning as meta-learning, so that each forgetting step is
chosen for how well it generalises — to forget samples it was not computed on, and to the
retain knowledge measured on only a SMALL retain subset R̂ — and harmonise the forgetting and
remembering gradients where they conflict. Each iteration has three phases:

1. meta-tune: a virtual step on a forget (support) batch B_F,
   ``θ' = θ − α ∇_θ L_mem(θ; B_F)``, computed with :func:`torch.func.functional_call` so that
   ``θ'`` stays a differentiable function of ``θ``;
2. meta-test: at ``θ'`` the remembering loss ``L_rem(θ') = CE on a batch of R̂`` and the
   forgetting loss ``L_mem(θ'; B_F')`` on a query forget batch B_F' drawn from an independent
   shuffle of F (a step is good when it also forgets samples it was not computed on);
3. meta-update: ``g_f = ∇_θ [L_mem(θ; B_F) + L_mem(θ'; B_F')]`` (MLDG-style train + test
   objective) and ``g_r = ∇_θ λ·L_rem(θ')``, both flowing through ``θ'`` — SECOND order by
   default (exact; ``first_order=true`` drops the Hessian terms, as first-order MAML does,
   for models where double backward is too costly); then Gradient Harmonization
   (:func:`harmonize`) and one Adam step with the sum.

The membership signal (our choice; the paper trains K differentiable membership-inference
models on an audit set): ``L_mem`` is the distance between the distribution of the logit
margins ``m = z_y − max_{j≠y} z_j`` of a forget batch and that of the held-out reference rows
under the current model — sorted forget margins against reference quantiles at the same
levels, Huber loss (δ = 1), reference side constant (re-measured every epoch). Why:

- when the two distributions match, no threshold attack on the margin (or on loss or
  confidence, its near-monotone cousins) tells forget from held-out rows: it is the quantity
  the audit tests, without training attackers (no shadow data, no attacker variance);
- the margin does not saturate like ``p_y`` (gradient ±1 per logit) and ``m > 0`` exactly when
  the prediction is right, so matching margins drives forget accuracy to the held-out level,
  the same target the stop rule uses;
- it is self-limiting (it pulls margins up as well as down, so it cannot run away) and robust
  to heavy tails (quantiles are paired, Huber caps each sample's pull).

Other choices: R̂ = ``retain_fraction`` (10 %) of R, at most ``retain_cap`` rows, drawn with the
run's seed; ``α`` = 0.1; Adam lr 1e-3 (scale-free across models, as ∇τ uses); length at most
``budget·|R|/|F|`` forget epochs (capped), stopped once forget accuracy reaches the held-out
reference accuracy, keeping the closer of the last two epochs (:class:`ReferenceStop`).
Mixed precision: bf16 autocast where the device has it; on fp16-only GPUs the run is fp32,
since loss scaling through a virtual step is fragile.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from unforget.device import Precision
from unforget.methods.base import Loader, MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import Guard, cycle, device_batch, freeze_batchnorm, weights_differ
from unforget.methods.pgu import ReferenceStop
from unforget.progress import Tick


@dataclass(frozen=True, kw_only=True)
class LtuConfig:
    """Options of ``ltu`` (``--set key=value``)."""

    lr: float | None = None  # SGD lr of the meta-update; None: lr_scale / λ_max
    lr_scale: float = 1.0  # calibrated lr as a share of 1/λ_max (plain GD is stable below 2)
    inner_lr: float | None = None  # α of the virtual step; None: inner_scale / λ_max
    inner_scale: float = 0.1  # calibrated α as a share of the inner problem's 1/λ_max
    power_iterations: int = 10  # Hessian-vector products to estimate λ_max
    remember: Literal["kl", "ce"] = "kl"  # remembering loss on R̂: KL to the original model, CE
    remember_weight: float = 1.0  # λ: weight of the remembering loss at θ'
    retain_fraction: float = 0.1  # share of R in the small retain subset R̂
    retain_cap: int = 5000  # rows: upper bound on |R̂|
    huber_delta: float = 1.0  # logits: Huber threshold of the margin matching
    first_order: bool = False  # drop second-order terms through θ' (cheaper, approximate)
    budget: float = 0.5  # forget epochs = ⌊budget·|R|/|F|⌋, capped by max_epochs
    max_epochs: int = 20

    def __post_init__(self) -> None:
        problems = []
        for name in ("lr_scale", "inner_scale", "huber_delta", "budget"):
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
        if self.max_epochs < 1:
            problems.append("max_epochs must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))


def harmonize(g_r: torch.Tensor, g_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient Harmonization on flat gradients: the remembering and forgetting directions.

    When ``g_r · g_f < 0`` each loses its component along the other (PCGrad-style, both
    against the ORIGINAL vectors)::

        g_f' = g_f − (g_f·g_r / ‖g_r‖²) g_r        g_r' = g_r − (g_r·g_f / ‖g_f‖²) g_f

    so ``g_f'·g_r = g_r'·g_f = 0``, and the sum ``g_r' + g_f'`` has a non-negative inner product
    with both originals (``g_r'·g_r ≥ 0`` by Cauchy–Schwarz). Otherwise both are unchanged.
    Coefficients are computed in float64.
    """
    dot = torch.dot(g_r.double(), g_f.double())
    if dot >= 0:
        return g_r, g_f
    tiny = torch.finfo(torch.float64).tiny
    f_on_r = (dot / torch.dot(g_r.double(), g_r.double()).clamp_min(tiny)).to(g_f.dtype)
    r_on_f = (dot / torch.dot(g_f.double(), g_f.double()).clamp_min(tiny)).to(g_r.dtype)
    return g_r - r_on_f * g_f, g_f - f_on_r * g_r


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{j≠y} z_j`` per row (float32): positive exactly when the prediction is right."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def membership_gap(forget_margins: torch.Tensor, reference: torch.Tensor, *,
                   delta: float) -> torch.Tensor:
    """Huber distance between sorted forget margins and the reference quantiles at the same
    levels ``(i + ½)/n``; ``reference`` is a sorted constant (no gradient)."""
    n = forget_margins.shape[0]
    levels = (torch.arange(n, device=reference.device, dtype=reference.dtype) + 0.5) / n
    target = torch.quantile(reference, levels)
    ordered = torch.sort(forget_margins).values
    return nn.functional.huber_loss(ordered, target, delta=delta)


@torch.no_grad()
def reference_margins(model: nn.Module, loader: Loader, precision: Precision) -> torch.Tensor:
    """Sorted margins of the current model on the reference rows (eval mode)."""
    out = []
    for batch in loader:
        x, y = device_batch(batch, precision)
        with autocast(precision):
            out.append(margins(model(x), y))
    return torch.sort(torch.cat(out)).values


def autocast(precision: Precision) -> Any:
    """The precision's autocast, or fp32 where it would need loss scaling (fp16)."""
    if precision.needs_scaler:
        return torch.autocast(device_type=precision.device.type, enabled=False)
    return precision.autocast()


def retain_subset(task: UnlearnTask, *, fraction: float, cap: int) -> Loader:
    """A shuffled loader over ``min(cap, ⌈fraction·|R|⌉)`` retain rows drawn with the seed."""
    dataset = task.retain.dataset
    size = max(1, min(cap, math.ceil(fraction * len(dataset)), len(dataset)))
    rng = np.random.default_rng(task.seed)
    rows = np.sort(rng.choice(len(dataset), size=size, replace=False)).tolist()
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, rows),
        batch_size=task.retain.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(task.seed),
        collate_fn=task.retain.collate_fn,
        pin_memory=task.precision.device.type == "cuda",
    )


def flat(grads: tuple[torch.Tensor | None, ...], params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


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
        model, precision = task.model, task.precision
        freeze_batchnorm(model)
        before = copy.deepcopy(model.state_dict())
        subset = retain_subset(task, fraction=config.retain_fraction, cap=config.retain_cap)
        stop = ReferenceStop(model, task)
        details: dict[str, Any] = {"retain_subset": len(subset.dataset),
                                   "order": "first" if config.first_order else "second",
                                   "conflicts": 0}
        steps, reached = 0, stop.measure(0)
        if not reached:
            steps, reached = _meta_loop(task, config, subset, stop, details)
        details.update(history=stop.history, kept_epoch=stop.kept_epoch)
        return Outcome(model=model, steps=steps, stop_reason=stop.reason(reached=reached),
                       details=details, weights_changed=weights_differ(before, model.state_dict()))


def _meta_loop(task: UnlearnTask, config: LtuConfig, subset: Loader, stop: ReferenceStop,
               details: dict[str, Any]) -> tuple[int, bool]:
    """Meta-tune / meta-test / meta-update over forget epochs; returns (steps, reached)."""
    model, precision = task.model, task.precision
    meta = MetaStep.create(model, config, precision)
    retain_it, query_it = cycle(subset), cycle(task.forget)
    reference_it = cycle(task.reference)
    lr = config.lr
    if lr is None or meta.inner_lr is None:
        curvature = meta.curvature(device_batch(next(query_it), precision),
                                   device_batch(next(reference_it), precision))
        lr = lr if lr is not None else config.lr_scale / curvature
        meta.inner_lr = meta.inner_lr or config.inner_scale / curvature
        details["curvature"] = curvature
    details.update(lr=lr, inner_lr=meta.inner_lr)
    optimizer = torch.optim.SGD(meta.params, lr=lr)
    guard = Guard(model, task.retain_eval, precision, task.guard)
    guard.start()
    epochs = max(1, min(config.max_epochs, math.floor(config.budget * task.n_retain
                                                       / max(task.n_forget, 1))))
    total = epochs * len(task.forget)
    step = 0
    for epoch in range(1, epochs + 1):
        for batch in task.forget:
            g_r, g_f, value = meta.gradients(
                device_batch(batch, precision), device_batch(next(query_it), precision),
                device_batch(next(retain_it), precision),
                device_batch(next(reference_it), precision))
            details["conflicts"] += int(torch.dot(g_r, g_f) < 0)
            r, f = harmonize(g_r, g_f)
            set_grads(meta.params, r + f)
            optimizer.step()
            step += 1
            guard.check_loss(value, step=step, method="ltu")
            guard.check(step=step, method="ltu")
            task.on_progress(Tick("ltu", step, total, {"loss": value}))
        if stop.measure(epoch):
            return step, True
    return step, False


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
        return cls(model=model, teacher=teacher, names=[n for n, _ in named],
                   params=[p for _, p in named], config=config, precision=precision,
                   inner_lr=config.inner_lr)

    def forgetting(self, logits: torch.Tensor, y: torch.Tensor,
                   reference: torch.Tensor) -> torch.Tensor:
        return membership_gap(margins(logits, y), reference, delta=self.config.huber_delta)

    def remembering(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.config.remember == "ce":
            return nn.functional.cross_entropy(logits.float(), y)
        with torch.no_grad():
            target = torch.log_softmax(self.teacher(x).float(), dim=1)
        return nn.functional.kl_div(torch.log_softmax(logits.float(), dim=1), target,
                                    log_target=True, reduction="batchmean")

    def curvature(self, forget: Pair, reference: Pair) -> float:
        """λ_max of the forgetting loss's Hessian on one forget batch (power iteration)."""
        with autocast(self.precision):
            target = self.reference(reference)
            loss = self.forgetting(self.model(forget[0]), forget[1], target)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        top = top_eigenvalue(grads, self.params, iterations=self.config.power_iterations)
        return max(top, 1e-6)

    @torch.no_grad()
    def reference(self, batch: Pair) -> torch.Tensor:
        return torch.sort(margins(self.model(batch[0]), batch[1])).values

    def gradients(self, support: Pair, query: Pair, retain: Pair,
                  reference: Pair) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(g_r, g_f, loss)``: flat remembering and forgetting meta-gradients."""
        alpha, order2 = float(self.inner_lr or 0.0), not self.config.first_order
        with autocast(self.precision):
            target = self.reference(reference)
            tune = self.forgetting(self.model(support[0]), support[1], target)
            inner = torch.autograd.grad(tune, self.params, allow_unused=True,
                                        retain_graph=True, create_graph=order2)
            fast = {n: p if g is None else p - alpha * g
                    for n, p, g in zip(self.names, self.params, inner, strict=True)}
            test = self.forgetting(functional_call(self.model, fast, (query[0],)), query[1],
                                   target)
            remember = self.remembering(functional_call(self.model, fast, (retain[0],)),
                                        retain[0], retain[1])
        g_f = flat(torch.autograd.grad(tune + test, self.params, retain_graph=True,
                                       allow_unused=True), self.params)
        g_r = flat(torch.autograd.grad(self.config.remember_weight * remember, self.params,
                                       allow_unused=True), self.params)
        return g_r, g_f, float((tune + test + remember).detach())


def top_eigenvalue(grads: tuple[torch.Tensor | None, ...], params: list[nn.Parameter], *,
                   iterations: int) -> float:
    """Largest |eigenvalue| of the Hessian behind ``grads`` (built with create_graph) by power
    iteration on Hessian-vector products; 0 when the gradient does not depend on ``params``."""
    pairs = [(g, p) for g, p in zip(grads, params, strict=True) if g is not None]
    if not pairs or not any(g.requires_grad for g, _ in pairs):
        return 0.0
    vector = [torch.randn_like(p) for _, p in pairs]
    value = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        vector = [v / norm for v in vector]
        hvp = torch.autograd.grad([g for g, _ in pairs], [p for _, p in pairs],
                                  grad_outputs=vector, retain_graph=True, allow_unused=True)
        hvp = [h if h is not None else torch.zeros_like(v) for h, v in zip(hvp, vector, strict=True)]
        value = float(sum((h * v).sum() for h, v in zip(hvp, vector, strict=True)))
        vector = [h.detach() for h in hvp]
    return abs(value)


def set_grads(params: list[nn.Parameter], vector: torch.Tensor) -> None:
    """Write a flat gradient back into ``p.grad`` of each parameter (inverse of :func:`flat`)."""
    offset = 0
    for p in params:
        p.grad = vector[offset:offset + p.numel()].reshape(p.shape).clone()
        offset += p.numel()


METHOD = Ltu()
