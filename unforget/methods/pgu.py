"""PGU: projected-gradient unlearning (Hoang, Rana, Gupta, Venkatesh; WACV 2024, arXiv 2312.04095).

Idea (the paper's §3): keep what the model knows about the retain set R by moving each layer's
weights only in directions that R's layer inputs do not use, as gradient projection memory does
in continual learning, and do it without reading R at unlearning time.

For every Linear/Conv2d layer ``l`` (see :mod:`unforget.methods.pgu_stats`):

1. Retain statistics by subtraction, ``C_l^R = C_l^full − C_l^F``: ``C^full`` from the
   checkpoint's sidecar (written at training time), ``C^F`` from one pass over the forget set.
   Without a usable sidecar, ``C^R`` is measured on R directly (the same matrix, without the
   cancellation); ``details["statistics"]`` says which: ``"sidecar"`` or ``"computed"``.
2. Subspace: ``C_l^R = U S Uᵀ``; keep the top ``k_l`` eigenvectors, the fewest whose share of
   the spectrum of the activations (cumulative √eigenvalues over their total, i.e. singular
   values of the stacked inputs) reaches ``ε_l``; ``P_l = U_k U_kᵀ``.
3. Objective on forget batches only (ours in the paper's spirit: push the true-class
   probability down, push the prediction entropy up)::

       L = mean −log(1 − (p_y − c)) − w_H · mean H(p)

   ``c`` > 0 keeps the log finite (1 − p_y + c ≥ c); it sets the largest push (1/c at p_y = 1).
4. Update: the gradient of the augmented weight ``[W b]`` (out × d_l) becomes
   ``G − G P_l``, orthogonal to the retained input subspace, so ``ΔW a = 0`` for retained
   inputs ``a`` to first order; layers without statistics (norms, embeddings) are frozen.
   Plain SGD (no momentum, no weight decay, which would leave the subspace), learning rate
   decaying geometrically from ``lr_start`` to ``lr_end``; BatchNorm statistics frozen.
5. Stop: after every forget epoch compare forget accuracy with accuracy on the held-out
   reference rows; once forget accuracy is at or below it, keep whichever of the last two
   epochs is closer (:class:`ReferenceStop`).

Choices where the paper is silent or we depart from it, and why:

- ``ε`` = 0.95 for every layer (the authors' released configs use 0.95; ``threshold_step``
  gives deeper layers a larger ``ε`` as GPM does). With ε < 1 the discarded tail is where
  individual samples leave their mark, which is the only place a projected step can act on
  forget inputs that resemble retained ones.
- ``lr`` 0.05 → 0.01 (the authors' released values); ``c`` = 0.1 (methods.md); ``w_H`` = 0.2.
- Length: at most ``budget`` retain-epochs of work, i.e. ``⌊budget·|R|/|F|⌋`` forget epochs
  (capped by ``max_epochs``), so the run costs a fraction of retraining's ``recipe.epochs``
  passes over R whatever the forget-set size.
- The guard rail (:class:`~unforget.methods.loop.Guard`) reads the fixed retain sample
  ``task.retain_eval``; the training retain loader is not read on the sidecar path.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from unforget.errors import CheckpointError, InputError
from unforget.methods.base import MethodInfo, Outcome, UnlearnTask
from unforget.methods.loop import Guard, accuracy, device_batch, freeze_batchnorm, weights_differ
from unforget.methods.pgu_stats import (
    SAMPLES_KEY,
    compute_statistics,
    input_dim,
    load_statistics,
    sample_count,
    subtract,
    supported_layers,
)
from unforget.progress import Tick


@dataclass(frozen=True, kw_only=True)
class PguConfig:
    """Options of ``pgu`` (``--set key=value``)."""

    threshold: float = 0.95  # ε: share of the √eigenvalue spectrum kept as retained subspace
    threshold_step: float = 0.0  # ε_l = min(1, ε + l·step), l = layer index in model order
    lr: float | None = None  # SGD lr at the first step; None: calibrated, see relative_step
    relative_step: float = 0.01  # calibrated lr moves the weights by this share of their norm
    lr_decay: float = 0.2  # lr at the last planned step = lr_decay · first lr (geometric)
    offset: float = 0.1  # c in −log(1 − (p_y − c)); > 0 keeps the loss finite
    entropy_weight: float = 0.2  # w_H: weight of the (maximised) prediction entropy
    budget: float = 1.0  # retain-epochs of work: forget epochs = ⌊budget·|R|/|F|⌋
    max_epochs: int = 30  # cap on forget epochs

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.threshold <= 1.0:
            problems.append("threshold must be in (0, 1]")
        if not 0.0 <= self.threshold_step < 1.0:
            problems.append("threshold_step must be in [0, 1)")
        if self.lr is not None and self.lr <= 0.0:
            problems.append("lr must be > 0 (or none to calibrate it)")
        if not 0.0 < self.relative_step < 1.0:
            problems.append("relative_step must be in (0, 1)")
        if not 0.0 < self.lr_decay <= 1.0:
            problems.append("lr_decay must be in (0, 1]")
        if not 0.0 < self.offset < 1.0:
            problems.append("offset must be in (0, 1)")
        if self.entropy_weight < 0.0:
            problems.append("entropy_weight must be >= 0")
        if self.budget <= 0.0:
            problems.append("budget must be > 0")
        if self.max_epochs < 1:
            problems.append("max_epochs must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class ReferenceStop:
    """Per-epoch stop rule: forget accuracy down to the held-out reference accuracy.

    After each epoch both accuracies are measured (the reference is re-measured, as the model
    changes). Once forget accuracy is at or below reference accuracy the run stops and the
    model keeps whichever of the last two epochs has the smaller gap (PGU's rule, also used by
    ``ltu`` and ``lur``). ``history`` rows are JSON-ready for the receipt.
    """

    model: nn.Module
    task: UnlearnTask
    history: list[dict[str, float]] = field(default_factory=list)
    kept_epoch: int = 0
    _previous: dict[str, torch.Tensor] | None = None

    def measure(self, epoch: int) -> bool:
        """Record epoch ``epoch`` (0 = before any step); True when the run should stop."""
        if self.task.reference is None:
            raise InputError("this method needs held-out reference rows (data.reference_fraction)")
        forget = accuracy(self.model, self.task.forget_eval, self.task.precision)
        reference = accuracy(self.model, self.task.reference, self.task.precision)
        self.history.append({"epoch": epoch, "forget_accuracy": round(forget, 6),
                             "reference_accuracy": round(reference, 6)})
        reached = forget <= reference
        if reached and self._previous is not None and self._gap(-2) < self._gap(-1):
            self.model.load_state_dict(self._previous)
            self.kept_epoch = epoch - 1
        else:
            self.kept_epoch = epoch
            self._previous = copy.deepcopy(self.model.state_dict())
        return reached

    def _gap(self, index: int) -> float:
        row = self.history[index]
        return abs(row["forget_accuracy"] - row["reference_accuracy"])

    def reason(self, *, reached: bool) -> str:
        """One line for the receipt: why the run stopped and which epoch was kept."""
        last, kept = self.history[-1], self.history[self.kept_epoch]
        state = (f"epoch {last['epoch']}: forget accuracy {last['forget_accuracy']:.1%} vs "
                 f"reference {last['reference_accuracy']:.1%}")
        if kept is not last:
            state += (f"; kept epoch {kept['epoch']}: {kept['forget_accuracy']:.1%} vs "
                      f"{kept['reference_accuracy']:.1%}")
        if not reached:
            return f"epoch budget spent ({state})"
        if len(self.history) == 1:
            return f"forget accuracy already at the held-out level ({state})"
        return f"forget accuracy reached the held-out level ({state})"


def forget_objective(logits: torch.Tensor, y: torch.Tensor, *, offset: float,
                     entropy_weight: float) -> torch.Tensor:
    """``mean −log(1 − (p_y − c)) − w_H · mean H(p)`` over a batch (float32), see module doc."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    p_y = p.gather(1, y[:, None]).squeeze(1)
    push = -torch.log((1.0 - p_y + offset).clamp_min(1e-6))
    entropy = -(p * log_p).sum(dim=1)
    return push.mean() - entropy_weight * entropy.mean()


def retained_basis(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """``U_k`` (d × k, float64): the fewest top eigenvectors of ``c`` whose √eigenvalues reach
    ``threshold`` of their total. Negative eigenvalues (rounding after a subtraction) count 0.
    """
    values, vectors = torch.linalg.eigh(c.double())
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
    singular = values.sqrt()
    total = float(singular.sum())
    if total <= 0.0:
        return vectors[:, :0]
    share = singular.cumsum(0) / total
    k = min(int((share < threshold - 1e-12).sum()) + 1, c.shape[0])
    return vectors[:, :k]


def retained_bases(stats: dict[str, torch.Tensor], *, threshold: float,
                   threshold_step: float) -> dict[str, torch.Tensor]:
    """``{layer: U_k}`` for every layer in ``stats``, with ``ε_l = min(1, ε + l·step)``."""
    names = [n for n in stats if n != SAMPLES_KEY]
    return {name: retained_basis(stats[name], min(1.0, threshold + i * threshold_step))
            for i, name in enumerate(names)}


def augmented_grad(layer: nn.Module) -> torch.Tensor | None:
    """The gradient of ``[W b]`` as (out × d_l), or None when the layer got no gradient."""
    if layer.weight.grad is None:
        return None
    grad = layer.weight.grad.reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        bias = layer.bias.grad if layer.bias.grad is not None else torch.zeros_like(layer.bias)
        grad = torch.cat([grad, bias[:, None]], dim=1)
    return grad


@torch.no_grad()
def project_gradients(layers: dict[str, nn.Module], bases: dict[str, torch.Tensor]) -> None:
    """In place: ``G ← G − (G U_k) U_kᵀ`` for every layer's augmented gradient."""
    for name, basis in bases.items():
        layer = layers[name]
        grad = augmented_grad(layer)
        if grad is None:
            continue
        grad = grad - (grad @ basis) @ basis.T
        fan_in = layer.weight[0].numel()
        layer.weight.grad.copy_(grad[:, :fan_in].reshape(layer.weight.shape))
        if layer.bias is not None:
            if layer.bias.grad is None:
                layer.bias.grad = torch.zeros_like(layer.bias)
            layer.bias.grad.copy_(grad[:, fan_in])


class Pgu:
    info: ClassVar[MethodInfo] = MethodInfo(
        name="pgu",
        summary="Forget-set steps projected off the retain set's layer-input subspace",
        needs=("forget", "reference", "statistics"),
        paper="Hoang, Rana, Gupta, Venkatesh. Learn to Unlearn for Deep Neural Networks: "
              "Minimizing Unlearning Interference with Gradient Projection. WACV 2024 "
              "(arXiv 2312.04095)",
    )
    Config: ClassVar[type] = PguConfig

    def run(self, task: UnlearnTask, config: PguConfig) -> Outcome:
        model, precision = task.model, task.precision
        freeze_batchnorm(model)
        start = time.perf_counter()
        stats, details = retain_statistics(task)
        layers = supported_layers(model)
        if len(stats) <= 1:
            raise InputError("pgu: the model has no Linear or Conv2d layer to project")
        bases = {name: basis.to(device=precision.device, dtype=torch.float32)
                 for name, basis in retained_bases(
                     stats, threshold=config.threshold,
                     threshold_step=config.threshold_step).items()}
        details["layers"] = {name: {"dim": int(b.shape[0]), "kept": int(b.shape[1])}
                             for name, b in bases.items()}
        details["statistics_seconds"] = round(time.perf_counter() - start, 3)
        before = copy.deepcopy(model.state_dict())
        trainable = [p for name in bases for p in layers[name].parameters(recurse=False)]
        flags = {p: p.requires_grad for p in model.parameters()}
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in trainable:
                p.requires_grad_(True)
            steps, reached, stop = _descend(task, config, layers, bases, trainable, details)
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
        details.update(history=stop.history, kept_epoch=stop.kept_epoch)
        return Outcome(model=model, steps=steps, stop_reason=stop.reason(reached=reached),
                       details=details, weights_changed=weights_differ(before, model.state_dict()))


def retain_statistics(task: UnlearnTask) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``C^R`` and how it was obtained: sidecar minus forget, else measured on R.

    A sidecar is used only when it covers this model's layers with the right dimensions and
    its sample count equals |R| + |F| (otherwise it belongs to another checkpoint or an
    earlier state of the ledger); the reason it was skipped is recorded.
    """
    model, precision = task.model, task.precision
    details: dict[str, Any] = {}
    if task.statistics is not None:
        try:
            full = load_statistics(task.statistics)
            _check_sidecar(full, model, expected=task.n_retain + task.n_forget)
            forget = compute_statistics(model, task.forget_eval, precision)
            details.update(statistics="sidecar", statistics_file=task.statistics.name)
            return subtract(full, forget), details
        except (CheckpointError, ValueError) as exc:
            details["statistics_note"] = f"sidecar {task.statistics.name} not used: {exc}"
    details["statistics"] = "computed"
    return compute_statistics(model, task.retain, precision), details


def _check_sidecar(full: dict[str, torch.Tensor], model: nn.Module, *, expected: int) -> None:
    layers = supported_layers(model)
    wrong = [n for n, t in full.items()
             if n != SAMPLES_KEY and (n not in layers or t.shape[0] != input_dim(layers[n]))]
    if wrong:
        raise ValueError(f"layers do not fit the model: {', '.join(wrong[:5])}")
    if sample_count(full) != expected:
        raise ValueError(f"it sums over {sample_count(full)} samples but |R| + |F| = "
                         f"{expected} (stale sidecar)")


def _descend(task: UnlearnTask, config: PguConfig, layers: dict[str, nn.Module],
             bases: dict[str, torch.Tensor], trainable: list[nn.Parameter],
             details: dict[str, Any]) -> tuple[int, bool, ReferenceStop]:
    """The projected SGD loop with the per-epoch stop rule; returns (steps, reached, stop)."""
    model, precision = task.model, task.precision
    stop = ReferenceStop(model, task)
    if stop.measure(0):
        return 0, True, stop
    epochs = max(1, min(config.max_epochs, math.floor(config.budget * task.n_retain
                                                       / max(task.n_forget, 1))))
    total = epochs * len(task.forget)
    decay = config.lr_decay ** (1.0 / max(total - 1, 1))
    optimizer = torch.optim.SGD(trainable, lr=config.lr or 0.0, momentum=0.0, weight_decay=0.0)
    scaler = precision.scaler()
    guard = Guard(model, task.retain_eval, precision, task.guard)
    guard.start()
    lr0, step, reached = config.lr, 0, False
    for epoch in range(1, epochs + 1):
        for batch in task.forget:
            x, y = device_batch(batch, precision)
            with precision.autocast():
                logits = model(x)
            loss = forget_objective(logits, y, offset=config.offset,
                                    entropy_weight=config.entropy_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            project_gradients(layers, bases)
            if lr0 is None:
                lr0 = calibrated_lr(trainable, config.relative_step)
                details["lr"] = lr0
            for group in optimizer.param_groups:
                group["lr"] = (lr0 or 0.0) * decay**step
            scaler.step(optimizer)
            scaler.update()
            step += 1
            guard.check_loss(float(loss.detach()), step=step, method="pgu")
            guard.check(step=step, method="pgu")
            task.on_progress(Tick("pgu", step, total, {"loss": float(loss.detach())}))
        if stop.measure(epoch):
            reached = True
            break
    return step, reached, stop


@torch.no_grad()
def calibrated_lr(params: list[nn.Parameter], relative_step: float) -> float | None:
    """The lr whose SGD step on the current (projected) gradients moves ``params`` by
    ``relative_step`` of their norm; None while the gradients are non-finite (an fp16 step the
    scaler skips) or zero.

    Why: the projected gradient keeps only the share of the forget gradient outside the
    retained subspace, which varies by orders of magnitude between models and forget sets, so
    a fixed lr is either inert or reckless; the step size relative to the weights is not.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    g = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in grads])))
    w = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p) for p in params])))
    if not math.isfinite(g) or g == 0.0:
        return None
    return relative_step * w / g


METHOD = Pgu()
