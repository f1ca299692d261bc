"""PGU: projected-gradient unlearning (Hoang, Rana, Gupta, Venkatesh; WACV 2024, arXiv 2312.04095).

Idea: keep what the model knows about the retain set R by moving each layer's weights only in
directions that R's layer inputs do not use, as gradient projection memory (GPM) does in
continual learning, and do it without reading R at unlearning time. Equation numbers are ours
(the paper's are not quoted because its method section could not be checked against a stored
copy). For every Linear/Conv2d layer ``l`` (inputs ``a``, see :mod:`.pgu_stats`):

    (1) C_l^R = C_l^full − C_l^F,   C_l = Σ a aᵀ                    retain statistics
    (2) C_l^R = U S Uᵀ,  k_l = min{k : Σ_{i≤k} √s_i ≥ ε_l Σ_i √s_i},  P_l = U_k U_kᵀ
    (3) L = mean −log(1 − (p_y − c)) − w_H · mean H(p)              on forget batches only
    (4) G_l ← G_l − G_l P_l   (G_l: gradient of the augmented weight [W b], out × d_l)
    (5) θ ← θ − η_t G,  η_t = η_0 · ρ^(t/(T−1))                     plain SGD, geometric decay

(1): ``C^full`` from the checkpoint's sidecar (written at training time), ``C^F`` from one pass
over the forget set; without a usable sidecar ``C^R`` is measured on R directly (the same
matrix without the cancellation). ``details["statistics"]`` says which: ``"sidecar"`` or
``"computed"``. (2): √eigenvalues are the singular values of the stacked inputs. (3): push the
true-class probability down and the prediction entropy up; ``c`` > 0 keeps the log finite
(1 − p_y + c ≥ c) and caps the push at 1/c. (4): after it ``ΔW a = 0`` for inputs ``a`` in
the retained subspace, so retained layer outputs do not move to first order; layers without
statistics (norms, embeddings) are frozen. (5): no momentum or weight decay, which would leave
the subspace; BatchNorm statistics frozen. Stop: after every forget epoch compare forget
accuracy with accuracy on the held-out reference rows; once forget accuracy is at or below
it, keep whichever of the last two epochs is closer (:class:`ReferenceStop`).

Choices where the paper is silent or we depart from it, and why:

- ``ε`` = 0.95 for every layer (the value in the authors' released configurations;
  ``threshold_step`` raises ε for deeper layers, as GPM does). With ε < 1 the discarded tail
  is where individual samples leave their mark: the only place a projected step can act on
  forget inputs that resemble retained ones.
- Bias coordinate: inputs are augmented with a constant 1, so biases are projected with their
  weights (otherwise a bias step shifts every retained output).
- ``c`` = 0.1 (methods.md), ``w_H`` = 0.2 (the authors' released entropy weight).
- Step size: the authors' released ``η`` (0.05 → 0.01) was inert on our models: the projection
  keeps only 2-5 % of the forget gradient's norm (measured), a share that varies by orders
  of magnitude between models and forget sets. So ``η_0`` is calibrated on the first step to
  move the trainable weights by ``relative_step`` (1 %) of their norm (:func:`calibrated_lr`)
  and decays geometrically to ``lr_decay`` (0.2, the authors' ratio) of it; ``lr`` fixes it.
- Length: at most ``⌊budget·|R|/|F|⌋`` forget epochs (capped by ``max_epochs``): about
  ``budget`` retain-epochs of steps whatever the forget-set size, a fraction of retraining.
- Safety: the run also stops, restoring the previous epoch, once reference accuracy falls
  ``max_reference_drop`` below its start; the guard rail
  (:class:`~unforget.methods.loop.Guard`) reads the fixed retain sample ``task.retain_eval``.
  On the sidecar path the retain rows are not read (only their labels, from the split, to
  tell classes removed whole: :class:`ReferenceStop`).
- Consecutive deletions: the method's saved-state hook (:class:`PguStatistics`, the
  :class:`~unforget.methods.base.SavedState` of ``pgu``) gives the output checkpoint's sidecar,
  ``C^full − C^F`` measured with the weights before unlearning, so a sidecar always describes
  its checkpoint's current retain set; ``unforget train --pgu-stats`` writes the first one.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unforget.errors import CheckpointError, InputError
from unforget.methods.base import MethodInfo, Outcome, Trained, UnlearnTask
from unforget.methods.common import (
    ReferenceStop,
    calibrated_lr,
    forget_epochs,
    stop_problems,
    stopped_outcome,
)
from unforget.methods.loop import Guard, device_batch, freeze_batchnorm, require
from unforget.methods.pgu_stats import (
    SAMPLES_KEY,
    Layer,
    compute_statistics,
    fan_in,
    input_dim,
    load_statistics,
    sample_count,
    sidecar_path,
    statistics_bytes,
    supported_layers,
    updated_statistics,
)
from unforget.runtime.distributed import whole
from unforget.runtime.progress import Tick
from unforget.training.step import TrainStep, optimizer_for


@dataclass(frozen=True, kw_only=True)
class PguConfig:
    """Options of ``pgu`` (``--set key=value``)."""

    threshold: float = field(
        default=0.95,
        metadata={"help": "ε: share of the √eigenvalue spectrum kept as retained subspace"},
    )
    threshold_step: float = field(
        default=0.0, metadata={"help": "ε_l = min(1, ε + l·step), l = layer index in model order"}
    )
    lr: float | None = field(
        default=None,
        metadata={"help": "SGD lr at the first step; None: calibrated, see relative_step"},
    )
    relative_step: float = field(
        default=0.01,
        metadata={"help": "calibrated lr moves the weights by this share of their norm"},
    )
    lr_decay: float = field(
        default=0.2,
        metadata={"help": "lr at the last planned step = lr_decay · first lr (geometric)"},
    )
    offset: float = field(
        default=0.1, metadata={"help": "c in −log(1 − (p_y − c)); > 0 keeps the loss finite"}
    )
    entropy_weight: float = field(
        default=0.2, metadata={"help": "w_H: weight of the (maximised) prediction entropy"}
    )
    budget: float = field(
        default=2.0, metadata={"help": "retain-epochs of work: forget epochs = ⌊budget·|R|/|F|⌋"}
    )
    max_epochs: int = field(default=30, metadata={"help": "cap on forget epochs"})
    max_reference_drop: float = field(
        default=0.03, metadata={"help": "stop if reference accuracy falls this far below start"}
    )

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
        problems += stop_problems(
            max_epochs=self.max_epochs, max_reference_drop=self.max_reference_drop
        )
        require(problems)


def forget_objective(
    logits: torch.Tensor, y: torch.Tensor, *, offset: float, entropy_weight: float
) -> torch.Tensor:
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


def retained_bases(
    stats: dict[str, torch.Tensor], *, threshold: float, threshold_step: float
) -> dict[str, torch.Tensor]:
    """``{layer: U_k}`` for every layer in ``stats``, with ``ε_l = min(1, ε + l·step)``."""
    names = [n for n in stats if n != SAMPLES_KEY]
    return {
        name: retained_basis(stats[name], min(1.0, threshold + i * threshold_step))
        for i, name in enumerate(names)
    }


def augmented_grad(layer: Layer) -> torch.Tensor | None:
    """The gradient of ``[W b]`` as (out × d_l), or None when the layer got no gradient."""
    weight, bias = layer.weight, layer.bias
    if weight.grad is None:
        return None
    grad = weight.grad.reshape(weight.shape[0], -1)
    if bias is not None:
        bias_grad = bias.grad if bias.grad is not None else torch.zeros_like(bias)
        grad = torch.cat([grad, bias_grad[:, None]], dim=1)
    return grad


@torch.no_grad()
def project_gradients(layers: dict[str, Layer], bases: dict[str, torch.Tensor]) -> None:
    """In place: ``G ← G − (G U_k) U_kᵀ`` for every layer's augmented gradient."""
    for name, basis in bases.items():
        layer = layers[name]
        grad = augmented_grad(layer)
        if grad is None:
            continue
        grad = grad - (grad @ basis) @ basis.T
        weight, bias, width = layer.weight, layer.bias, fan_in(layer)
        weight.grad = grad[:, :width].reshape(weight.shape).to(weight.dtype)
        if bias is not None:
            bias.grad = grad[:, width].contiguous().to(bias.dtype)


class PguStatistics:
    """PGU's saved state: the layer statistics sidecar ``<ckpt stem>.pgu.safetensors``
    (:mod:`~unforget.methods.pgu_stats`), kept current across deletions (``C^full − C^F``)."""

    label = "PGU statistics"

    def path(self, checkpoint: Path) -> Path:
        return sidecar_path(checkpoint)

    def measure(self, trained: Trained) -> Any:
        return compute_statistics(trained.model, trained.loader, trained.precision)

    def carry(self, task: UnlearnTask) -> dict[str, torch.Tensor] | None:
        return sidecar_update(task)

    def to_bytes(self, state: Any, *, checkpoint_sha256: str) -> bytes:
        return statistics_bytes(state, metadata={"unforget.checkpoint_sha256": checkpoint_sha256})


class Pgu:
    state: ClassVar[PguStatistics] = PguStatistics()
    info: ClassVar[MethodInfo] = MethodInfo(
        name="pgu",
        summary="Forget-set steps projected off the retain set's layer-input subspace",
        needs=("forget", "retain", "reference", "statistics"),
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
        bases = {
            name: basis.to(device=precision.device, dtype=torch.float32)
            for name, basis in retained_bases(
                stats, threshold=config.threshold, threshold_step=config.threshold_step
            ).items()
        }
        details["layers"] = {
            name: {"dim": int(b.shape[0]), "kept": int(b.shape[1])} for name, b in bases.items()
        }
        details["statistics_seconds"] = round(time.perf_counter() - start, 3)
        before = copy.deepcopy(model.state_dict())
        trainable = [p for name in bases for p in layers[name].parameters(recurse=False)]
        flags = {p: p.requires_grad for p in model.parameters()}
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in trainable:
                p.requires_grad_(True)
            steps, stop = _descend(task, config, layers, bases, trainable, details)
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
        return stopped_outcome(model, before, steps=steps, stop=stop, details=details)


def retain_statistics(task: UnlearnTask) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``C^R`` and how it was obtained: sidecar minus forget, else measured on R.

    A sidecar is used only when it covers this model's layers with the right dimensions and
    its sample count equals |R| + |F| (otherwise it belongs to another checkpoint or an
    earlier state of the ledger); the reason it was skipped is recorded.
    """
    details: dict[str, Any] = {}
    if task.saved_state is not None:
        try:
            retain = _from_sidecar(task)
            details.update(statistics="sidecar", statistics_file=task.saved_state.name)
            return retain, details
        except (CheckpointError, ValueError) as exc:
            details["statistics_note"] = f"sidecar {task.saved_state.name} not used: {exc}"
    details["statistics"] = "computed"
    # every rank needs C^R of the whole retain set, not of its shard (torchrun)
    return compute_statistics(task.model, whole(task.retain), task.precision), details


def sidecar_update(task: UnlearnTask) -> dict[str, torch.Tensor] | None:
    """The statistics sidecar for the checkpoint this deletion will produce, or None.

    ``C^full − C^F`` with ``C^F`` measured on ``task.model`` AS IT IS NOW, so call it before
    the method runs (methods modify ``task.model``). None when the task has no usable sidecar
    (the next ``pgu`` run then measures its statistics on the retain set).
    """
    if task.saved_state is None:
        return None
    try:
        return _from_sidecar(task)
    except (CheckpointError, ValueError):
        return None


def _from_sidecar(task: UnlearnTask) -> dict[str, torch.Tensor]:
    """Sidecar ``C^full`` minus ``C^F``; raises CheckpointError/ValueError when unusable."""
    if task.saved_state is None:
        raise ValueError("the checkpoint has no statistics sidecar")
    full = load_statistics(task.saved_state)
    _check_sidecar(full, task.model, expected=task.n_retain + task.n_forget)
    return updated_statistics(full, task.model, task.forget_eval, task.precision)


def _check_sidecar(full: dict[str, torch.Tensor], model: nn.Module, *, expected: int) -> None:
    layers = supported_layers(model)
    wrong = [
        n
        for n, t in full.items()
        if n != SAMPLES_KEY and (n not in layers or t.shape[0] != input_dim(layers[n]))
    ]
    if wrong:
        raise ValueError(f"layers do not fit the model: {', '.join(wrong[:5])}")
    if sample_count(full) != expected:
        raise ValueError(
            f"it sums over {sample_count(full)} samples but |R| + |F| = {expected} (stale sidecar)"
        )


def _descend(
    task: UnlearnTask,
    config: PguConfig,
    layers: dict[str, Layer],
    bases: dict[str, torch.Tensor],
    trainable: list[nn.Parameter],
    details: dict[str, Any],
) -> tuple[int, ReferenceStop]:
    """The projected SGD loop with the per-epoch stop rule; returns (steps, stop)."""
    model, precision = task.model, task.precision
    stop = ReferenceStop(model, task, max_drop=config.max_reference_drop)
    if stop.measure(0):
        return 0, stop
    epochs = forget_epochs(task, budget=config.budget, max_epochs=config.max_epochs)
    total = epochs * len(task.forget)
    decay = config.lr_decay ** (1.0 / max(total - 1, 1))
    optimizer = optimizer_for("sgd", trainable, lr=config.lr or 0.0, eager=not precision.compile)
    train_step = TrainStep(model, optimizer, precision=precision)
    guard = Guard(model, task.retain_eval, precision, task.guard)
    guard.start()
    lr0, step = config.lr, 0

    def project_and_scale() -> None:
        # (4) on the unscaled, rank-averaged gradients; (5) the lr of this step
        nonlocal lr0
        project_gradients(layers, bases)
        if lr0 is None:
            lr0 = calibrated_lr(trainable, config.relative_step)
            details["lr"] = lr0
        for group in optimizer.param_groups:
            group["lr"] = (lr0 or 0.0) * decay**step

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return forget_objective(
            model(x), y, offset=config.offset, entropy_weight=config.entropy_weight
        )

    for epoch in range(1, epochs + 1):
        for batch in task.forget:
            x, y = device_batch(batch, precision)
            train_step(functools.partial(objective, x, y), before_update=project_and_scale)
            step += 1
            if step % task.guard.check_every == 0:
                _check_loss(train_step, guard, step)
                guard.check(step=step, method="pgu")
            task.on_progress(Tick("pgu", step, total, {"loss": train_step.last}))
        _check_loss(train_step, guard, step)
        if stop.measure(epoch):
            break
    return step, stop


def _check_loss(train_step: TrainStep, guard: Guard, step: int) -> None:
    value, finite = train_step.flush()
    guard.check_loss(value if finite else float("nan"), step=step, method="pgu")


METHOD = Pgu()
