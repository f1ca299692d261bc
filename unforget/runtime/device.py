"""Device selection and mixed precision: one place that knows CPU from CUDA.

On CUDA, autocast uses bf16 where the GPU supports it (no loss scaling needed) and fp16 with a
``GradScaler`` elsewhere; on CPU everything runs in fp32, so results on both agree in
distribution and CPU runs are deterministic for a fixed seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from unforget.errors import InputError, param


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None = fp32), whether gradients need scaling (fp16), and whether
    training loops run the model under ``torch.compile`` (``--compile``, CUDA only)."""

    device: torch.device
    dtype: torch.dtype | None
    compile: bool = False

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda[:N]`` without a GPU is a clear input error."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} requested but no CUDA GPU is available; use {param('device', 'cpu')}"
        )
    if device.type not in {"cpu", "cuda"}:
        raise InputError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def precision_for(device: torch.device, *, amp: bool = True, compile: bool = False) -> Precision:
    """bf16 autocast on CUDA GPUs that support it, else fp16; fp32 on CPU or with ``amp=False``.

    ``compile`` is honoured on CUDA only: on CPU the compile time (tens of seconds) exceeds
    what it saves on the small models unforget trains there.
    """
    compile = compile and device.type == "cuda"
    if device.type != "cuda" or not amp:
        return Precision(device=device, dtype=None, compile=compile)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Precision(device=device, dtype=dtype, compile=compile)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global state."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
