"""One training step for every loop: the loss the caller supplies, backward, the optimiser step.

Every loop that updates weights (``unforget train`` and the audit's references in
:mod:`unforget.training.loop`, the fine-tuning baselines' :func:`unforget.methods.loop.descend`,
the default ``proxy-distill`` (its proxy and its distillation), ``nabla-tau``,
``nabla-tau-paper``, ``pgu``, ``ltu``, ``lur``) goes through :class:`TrainStep`, so mixed
precision, gradient clipping, accumulation and multi-process training live in one place and a
method is only its loss. One call does::

    with autocast:  loss = loss_fn()                 # bf16 on CUDA where supported, fp16
                                                     # with a GradScaler otherwise, fp32 on CPU
    (scaler.scale(loss) / accumulate).backward()     # DDP's no_sync on all but the last
                                                     # micro-batch of an accumulation
    average gradients across ranks                   # only for models not wrapped in DDP
    scaler.unscale_(optimizer); before_update()      # e.g. a projection or an lr calibration
    clip_grad_norm_(params, clip_norm)               # optional
    scaler.step(optimizer); scaler.update()

and returns the DETACHED loss without reading it: no host sync per step. Loops read numbers
only at their checks (:meth:`TrainStep.flush`: the last loss, and whether any loss since the
previous check was non-finite, agreed across ranks).

How a method loop uses it (the pattern every loop in this package follows)::

    from unforget.training.step import TrainStep, optimizer_for

    # or the recipe's optimiser: unforget.methods.loop.recipe_optimizer(task, lr_scale=...)
    optimizer = optimizer_for("sgd", params, lr=config.lr, eager=not task.precision.compile)
    step = TrainStep(model, optimizer, precision=task.precision)
    guard = Guard(model, task.retain_eval, task.precision, task.guard)
    guard.start()
    for i, (f_batch, r_batch) in enumerate(paired(task.forget, task.retain, steps=n), 1):
        xf, yf = device_batch(f_batch, task.precision)
        xr, yr = device_batch(r_batch, task.precision)
        step(lambda: my_forget_loss(model(xf), yf) + ce(model(xr), yr))
        if i % task.guard.check_every == 0:                     # the only host syncs
            loss, finite = step.flush()
            guard.check_loss(loss if finite else float("nan"), step=i, method="my-method")
            guard.check(step=i, method="my-method")
        task.on_progress(Tick("my-method", i, n, {"loss": step.last}))

The loss closure runs at once, inside the call (so a lambda over the loop's batch is safe).
``task.forget`` and ``task.retain`` are already sharded per rank under ``torchrun`` and the
step averages the gradients, so this loop is multi-process as written (a full pass that must
see every row, e.g. statistics, reads ``unforget.runtime.distributed.whole(task.retain)``).
The numbers a check decides on are averaged across ranks
(:func:`unforget.runtime.distributed.agreed`) so that every rank takes the same branch.
``apply`` refuses to write when the ranks end with different weights, which is what a loop
that bypasses the step produces under torchrun. A loop that computes
its gradients itself (``torch.autograd.grad``) writes them into ``p.grad`` and calls
:meth:`TrainStep.update` instead of the step.

Optimisers: :func:`optimizer_for` builds ``torch.optim.SGD``/``AdamW`` whose ``step``,
``zero_grad`` and ``add_param_group`` are the undecorated torch functions (same code, same
numbers bit for bit). The decorated ones import ``torch._dynamo`` on first use only to tell
a ``torch.compile`` trace where to break the graph: 1.3-2 s of CPU at the start of every
command that buys nothing in eager mode. With ``--compile`` the stock classes are used.

They also run torch's multi-tensor ("foreach") update on every device that has it. On CUDA
that is torch's own default; on CPU torch defaults to one Python loop of small ops per
parameter, which is the same arithmetic in the same order (the weights are equal bit for bit,
``tests/test_step.py``) but slower: a step of the shipped MLP at batch 128 on one core took
7.0-7.3 ms with it against 7.8-9.7 ms without (a 10-epoch retrain of full Fashion-MNIST: 36 s
against 42 s; docs/evidence/fashion-mnist.md, landing 7). ``fused=True`` is faster still but
rounds differently, so it would change every trained model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, cast

import torch
from torch import nn

from unforget.runtime import distributed
from unforget.runtime.device import Precision

LossFn = Callable[[], torch.Tensor]
FOREACH_DEVICES = ("cpu", "cuda", "mps")  # where torch has the multi-tensor update kernels
OptimizerKind = Literal["sgd", "adamw"]


def optimizer_for(
    kind: OptimizerKind,
    params: list[nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    eager: bool = True,
) -> torch.optim.Optimizer:
    """SGD (momentum, no Nesterov) or AdamW with torch's own update rules.

    ``eager`` (the default) skips the ``torch._dynamo`` import torch's decorators do on first
    use (see the module docstring); pass ``eager=False`` when the loop runs under
    ``torch.compile``.
    """
    options: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if eager and params and params[0].device.type in FOREACH_DEVICES:
        options["foreach"] = True  # same numbers as torch's per-parameter loop, fewer ops
    if kind == "sgd":
        cls: Any = _EAGER["sgd"] if eager else torch.optim.SGD
        return cls(params, momentum=momentum, **options)
    cls = _EAGER["adamw"] if eager else torch.optim.AdamW
    return cls(params, **options)


def _eager(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` with its dynamo-decorated methods replaced by the functions they wrap
    (``functools.wraps`` keeps them as ``__wrapped__``); ``cls`` itself if torch changes."""
    base = torch.optim.Optimizer
    members: dict[str, Any] = {}
    for name, owner in (("add_param_group", base), ("zero_grad", base), ("step", cls)):
        inner = getattr(getattr(owner, name), "__wrapped__", None)
        if inner is None:
            return cls
        members[name] = torch.no_grad()(inner) if name == "step" else inner
    return type(cls.__name__, (cls,), {**members, "__module__": __name__})


_EAGER: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": _eager(torch.optim.SGD),
    "adamw": _eager(torch.optim.AdamW),
}


class TrainStep:
    """Forward (the caller's loss), backward and update of ``model`` with ``optimizer``.

    Args:
        model: the module being trained, or its DistributedDataParallel wrapper (then DDP
            averages gradients during backward; otherwise :meth:`update` does under torchrun).
        optimizer: over the parameters to update.
        precision: device and autocast dtype; fp16 brings a GradScaler.
        scale: False runs fp16 precisions in fp32 instead of scaling (for losses that
            differentiate through a virtual step, where loss scaling is fragile).
        clip_norm: clip the global gradient norm to this value before the update (None: off).
        accumulate: micro-batches per optimiser update (gradients summed, loss divided).
        sync: average gradients across ranks in :meth:`update` (False for a loop that
            averages its own gradient pieces before combining them non-linearly).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        precision: Precision,
        scale: bool = True,
        clip_norm: float | None = None,
        accumulate: int = 1,
        sync: bool = True,
    ) -> None:
        if accumulate < 1:
            raise ValueError("accumulate must be >= 1")
        self.model = model
        self.optimizer = optimizer
        self.precision = (
            precision if scale or not precision.needs_scaler else replace(precision, dtype=None)
        )
        self.scaler = self.precision.scaler()
        self.clip_norm = clip_norm
        self.accumulate = accumulate
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        self._sync = sync and not self._ddp
        self._micro = 0
        self._loss: torch.Tensor | None = None
        self._bad: torch.Tensor | None = None
        self.last = float("nan")  # the loss read at the last flush()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.precision.autocast()

    def __call__(
        self, loss_fn: LossFn, *, before_update: Callable[[], None] | None = None
    ) -> torch.Tensor:
        """One micro-batch: ``loss_fn()`` under autocast, backward, and (at the end of an
        accumulation) the update. Returns the detached loss (no host sync)."""
        if self._micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        self._micro += 1
        last_micro = self._micro == self.accumulate
        sync: Any = contextlib.nullcontext()
        if self._ddp and not last_micro:  # gradients stay local until the last micro-batch
            sync = cast(nn.parallel.DistributedDataParallel, self.model).no_sync()
        with sync:
            with self.autocast():
                loss = loss_fn()
            self.backward(loss)
        if last_micro:
            self.update(before_update=before_update)
        return self.track(loss)

    def backward(self, loss: torch.Tensor) -> None:
        """Scaled backward of ``loss`` (divided by ``accumulate``)."""
        if self.accumulate > 1:
            loss = loss / self.accumulate
        self.scaler.scale(loss).backward()

    def update(self, *, before_update: Callable[[], None] | None = None) -> None:
        """Average gradients across ranks (unless DDP did), unscale, ``before_update()``,
        clip, step and update the scaler; the next call starts a new accumulation."""
        self._micro = 0
        if self._sync:
            distributed.average_gradients(self.params)
        if before_update is not None or self.clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
        if before_update is not None:
            before_update()
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def track(self, loss: torch.Tensor) -> torch.Tensor:
        """Remember ``loss`` for the next :meth:`flush` (on the device, no sync)."""
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        self._bad = bad if self._bad is None else self._bad | bad
        self._loss = loss
        return loss

    def flush(self) -> tuple[float, bool]:
        """``(last loss, all finite since the last flush)``: the one host sync of a check.

        The finiteness is agreed across ranks (a non-finite loss anywhere stops everyone).
        """
        if self._loss is None:
            return self.last, True
        self.last = float(self._loss.float())
        bad = bool(self._bad) if self._bad is not None else False
        self._bad = None
        return self.last, not distributed.any_rank(bad or not math.isfinite(self.last))
