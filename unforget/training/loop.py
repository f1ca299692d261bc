"""The one supervised training loop: ``unforget train``, the exact-retrain baseline and the
audit's reference models all go through :func:`fit`, so they share one recipe and one code path.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unforget.config.spec import Recipe, RunSpec
from unforget.data.loaders import Encoder, make_loader, source, to_device
from unforget.data.splits import InputInfo, Split
from unforget.errors import GuardRailError
from unforget.models import build_model
from unforget.runtime import distributed
from unforget.runtime.device import Precision, seed_everything
from unforget.runtime.progress import ProgressFn, Tick, silent
from unforget.training.step import OptimizerKind, TrainStep, optimizer_for

CHECK_EVERY = 20  # steps between host reads of the loss (the non-finite check)


@dataclass(frozen=True)
class TrainResult:
    """What a training run did; ``seconds`` is wall time of the loop alone."""

    epochs: int
    steps: int
    samples: int
    seconds: float
    final_loss: float

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def make_optimizer(
    params: list[nn.Parameter], recipe: Recipe, *, eager: bool = True
) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, Nesterov off) with the recipe's lr and weight decay
    (``eager``: see :func:`unforget.training.step.optimizer_for`)."""
    kind: OptimizerKind = "sgd" if recipe.optimizer == "sgd" else "adamw"
    return optimizer_for(
        kind,
        params,
        lr=recipe.lr,
        momentum=recipe.momentum if kind == "sgd" else 0.0,
        weight_decay=recipe.weight_decay,
        eager=eager,
    )


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base lr at ``step`` of ``total`` (constant, cosine to 0, linear to 0)."""
    progress = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def augment(x: torch.Tensor, kinds: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """On-device image augmentation: per-sample horizontal flip and random-crop translation.

    ``crop`` pads by 1/8 of the side (reflect) and cuts a random window of the original size,
    the usual CIFAR recipe. Non-image inputs are returned unchanged.
    """
    if x.dim() != 4 or not kinds:
        return x
    b, _, h, w = x.shape
    if "hflip" in kinds:
        flip = torch.rand(b, generator=generator).to(x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "crop" in kinds:
        pad = max(1, h // 8)
        padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    return x


def train_loop(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    recipe: Recipe,
    precision: Precision,
    seed: int,
    on_progress: ProgressFn = silent,
    task: str = "train",
) -> TrainResult:
    """Minimise cross-entropy over ``recipe.epochs`` passes of ``loader``.

    Under torchrun ``model`` is trained inside DistributedDataParallel (gradients averaged
    over ranks, each reading its shard of ``loader``); the loss is read on the host only every
    ``CHECK_EVERY`` steps and at the end.

    Raises:
        GuardRailError: the loss became non-finite (diverged); nothing is written.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe, eager=not precision.compile)
    step_fn = TrainStep(distributed.wrap(model), optimizer, precision=precision)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    generator = torch.Generator().manual_seed(seed + 1)
    total = recipe.epochs * len(loader)

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(step_fn.model(x), y)

    step, samples, last = 0, 0, float("nan")
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        for batch in loader:
            x, y, _ = to_device(batch, precision.device)
            x = augment(x, recipe.augmentation, generator)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * lr_factor(recipe.schedule, step, total)
            step_fn(functools.partial(objective, x, y))
            step += 1
            samples += len(y)
            if step % CHECK_EVERY == 0 or step == total:
                last, finite = step_fn.flush()
                if not finite:
                    raise GuardRailError(f"{task}: loss became {last} at step {step}; lower lr")
                on_progress(Tick(task, step, total, {"loss": last}))
    seconds = time.perf_counter() - start
    # DDP broadcasts rank 0's buffers at the start of each forward, but every rank then updates
    # its BatchNorm statistics on its own shard: without this the ranks end with different
    # buffers (and ``apply`` refuses ``retrain``'s model). Identity in one process.
    distributed.average_buffers(model)
    return TrainResult(
        epochs=recipe.epochs, steps=step, samples=samples, seconds=seconds, final_loss=last
    )


def fit(
    spec: RunSpec,
    *,
    split: Split,
    rows: np.ndarray,
    info: InputInfo,
    precision: Precision,
    seed: int,
    encoder: Encoder | None = None,
    allow_plugin: bool = False,
    on_progress: ProgressFn = silent,
    task: str = "train",
) -> tuple[nn.Module, TrainResult]:
    """Build a fresh model from ``spec`` and train it on ``rows`` of ``split`` with ``seed``.

    The seed drives initialisation, shuffling and augmentation, so one (spec, rows, seed)
    gives the same weights on CPU every time.
    """
    seed_everything(seed)
    model = build_model(
        spec.model, input_shape=info.shape, num_classes=info.num_classes, allow_plugin=allow_plugin
    )
    model = prepare_model(model, precision)
    if precision.compile:
        model.compile()  # in place: parameter names (and checkpoints) stay as they are
    src = source(split, rows, spec=spec.data, info=info, encoder=encoder)
    loader = make_loader(
        src,
        batch_size=spec.recipe.batch_size,
        shuffle=True,
        seed=seed,
        device=precision.device,
        num_workers=spec.recipe.num_workers,
    )
    result = train_loop(
        model,
        loader,
        recipe=spec.recipe,
        precision=precision,
        seed=seed,
        on_progress=on_progress,
        task=task,
    )
    return model, result


def prepare_model(model: nn.Module, precision: Precision) -> nn.Module:
    """Move to the device; convnets use ``channels_last`` on CUDA (faster tensor-core kernels)."""
    model = model.to(precision.device)
    if precision.device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model
