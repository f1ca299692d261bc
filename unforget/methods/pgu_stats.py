"""PGU's layer statistics: uncentred second moments of every Linear/Conv2d layer's inputs.

Projected-gradient unlearning (Hoang, Rana, Gupta, Venkatesh, WACV 2024, arXiv 2312.04095)
protects the retain set by moving each layer's weights only in directions its retained inputs
do not use. The directions come from, for every layer ``l``,

    C_l = Σ_a a aᵀ                                   (d_l × d_l, float64)

summed over every input vector ``a`` the layer sees on a data set: a row of a Linear layer's
input (leading dimensions flattened), or an unfolded input patch of a convolution
(``c_in · k_h · k_w`` values, taken with the layer's own stride, padding and dilation, so ``a``
is exactly what one output position's dot product reads).

Bias coordinate (our choice; the paper is silent): a layer with a bias gets a constant 1
appended to ``a``, so ``d_l = fan_in + 1``. Then ``W a + b = [W b] [a; 1]`` and projecting the
gradient of the augmented weight ``[W b]`` keeps the bias from shifting retained outputs too;
without it a bias step moves every retained output by the same amount.

Statistics are additive over disjoint data, so the retain set's are ``C^R = C^full − C^F``
(:func:`subtract`): computed once over the training data when the model is trained and stored
as a safetensors sidecar ``<ckpt stem>.pgu.safetensors``; at unlearning time only the forget
set is read. The dict also carries :data:`SAMPLES_KEY`, the number of samples summed over,
which lets a reader tell a stale sidecar (it must equal |R| + |F| of the deletion at hand).

Not covered (their weights are frozen by PGU): grouped convolutions, convolutions with a
non-zero padding mode, and layers never called in ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unforget.data.loaders import to_device
from unforget.errors import CheckpointError
from unforget.io.checkpoint import checkpoint_bytes, load_checkpoint
from unforget.io.fileio import atomic_write, refuse_existing
from unforget.runtime.device import Precision

SAMPLES_KEY = "__samples__"  # 0-d int64 tensor: samples summed over
META_KEY = "unforget.pgu"  # JSON: {"version", "samples", "layers": {name: dim}}
VERSION = 1

Loader = torch.utils.data.DataLoader
Layer = nn.Linear | nn.Conv2d  # the layers PGU projects


def sidecar_path(checkpoint: str | Path) -> Path:
    """``model.safetensors`` -> ``model.pgu.safetensors`` beside it."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.pgu.safetensors")


def supported_layers(model: nn.Module) -> dict[str, Layer]:
    """Linear and ungrouped, zero-padded Conv2d modules by name, in registration order."""
    out: dict[str, Layer] = {}
    for name, module in model.named_modules():
        if name == SAMPLES_KEY:
            raise ValueError(f"a module named {SAMPLES_KEY!r} clashes with the sample count")
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            out[name] = module
    return out


def fan_in(module: Layer) -> int:
    """Inputs of one output unit: ``in_features`` or ``c_in · k_h · k_w``."""
    return int(module.weight[0].numel())


def input_dim(module: Layer) -> int:
    """``d_l``: fan-in of one output unit, plus 1 for the bias coordinate when there is one."""
    return fan_in(module) + (module.bias is not None)


def layer_inputs(module: Layer, x: torch.Tensor) -> torch.Tensor:
    """The input vectors ``a`` the layer reads, as float64 rows (N, d_l).

    Linear: leading dimensions flattened. Conv2d: ``F.unfold`` patches with the layer's own
    geometry, one row per output position. A bias appends a column of ones.
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ValueError("string padding is not supported (see supported_layers)")
        patches = nn.functional.unfold(
            x,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    rows = rows.double()
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


@contextmanager
def _accumulating(layers: Mapping[str, Layer], sums: dict[str, torch.Tensor]) -> Iterator[None]:
    """Forward hooks that add ``aᵀa`` of every call into ``sums`` (removed on exit)."""

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: Layer, args: tuple[Any, ...], _: Any) -> None:
            rows = layer_inputs(module, args[0].detach())
            if name in sums:
                sums[name].addmm_(rows.T, rows)
            else:
                sums[name] = rows.T @ rows

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def compute_statistics(
    model: nn.Module, loader: Loader, precision: Precision
) -> dict[str, torch.Tensor]:
    """``C_l`` of every supported layer over ``loader`` (model in eval mode, restored after).

    Args:
        model: the trained model (its weights define the inputs of deeper layers).
        loader: yields ``(x, y, rows)`` batches; every batch counts once.
        precision: forward passes run under its autocast; sums are float64 on its device.

    Returns:
        ``{module name: (d_l, d_l) float64 on CPU}`` plus ``SAMPLES_KEY``: 0-d int64 count.
        Layers the data never reached are absent.
    """
    layers = supported_layers(model)
    sums: dict[str, torch.Tensor] = {}
    samples = 0
    was_training = model.training
    model.eval()
    try:
        with _accumulating(layers, sums):
            for batch in loader:
                x, _, _ = to_device(batch, precision.device)
                with precision.autocast():
                    model(x)
                samples += len(x)
    finally:
        model.train(was_training)
    out = {name: sums[name].cpu() for name in layers if name in sums}
    out[SAMPLES_KEY] = torch.tensor(samples, dtype=torch.int64)
    return out


def subtract(
    full: Mapping[str, torch.Tensor], forget: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``C^R = C^full − C^F`` for every layer of ``full`` (and the sample count).

    Raises:
        ValueError: a layer is missing from ``forget`` or shapes differ, or more samples would
            be removed than ``full`` holds.
    """
    problems = [name for name in full if name not in forget]
    problems += [name for name in full if name in forget and forget[name].shape != full[name].shape]
    if problems:
        raise ValueError(f"statistics do not match for layers: {', '.join(problems[:5])}")
    out = {name: full[name] - forget[name].to(full[name].dtype) for name in full}
    if int(out[SAMPLES_KEY]) < 0:
        raise ValueError(
            f"cannot remove {int(forget[SAMPLES_KEY])} samples from statistics "
            f"over {int(full[SAMPLES_KEY])}"
        )
    return out


def updated_statistics(
    full: Mapping[str, torch.Tensor], model: nn.Module, forget: Loader, precision: Precision
) -> dict[str, torch.Tensor]:
    """The sidecar for the checkpoint after a deletion: ``C^full − C^F``.

    ``model`` must hold the weights BEFORE unlearning (the ones ``full`` was measured with), so
    the subtraction removes exactly what the forget rows added; consecutive deletions keep
    subtracting, so a sidecar always describes its checkpoint's current retain set.
    """
    return subtract(full, compute_statistics(model, forget, precision))


def sample_count(stats: Mapping[str, torch.Tensor]) -> int:
    return int(stats[SAMPLES_KEY])


def save_statistics(
    path: str | Path,
    stats: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, Any],
    force: bool = False,
) -> str:
    """Write ``stats`` as a safetensors sidecar, atomically; return its SHA-256.

    ``metadata`` (e.g. the SHA-256 of the checkpoint the sidecar belongs to) is stored beside
    :data:`META_KEY`, which records the format version, sample count and layer dimensions.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is off.
    """
    refuse_existing(Path(path), force=force)
    return atomic_write(path, statistics_bytes(stats, metadata=metadata))


def statistics_bytes(stats: Mapping[str, torch.Tensor], *, metadata: Mapping[str, Any]) -> bytes:
    """The sidecar file's bytes (see :func:`save_statistics`)."""
    layers = {name: int(t.shape[0]) for name, t in stats.items() if name != SAMPLES_KEY}
    meta = dict(metadata)
    meta[META_KEY] = {"version": VERSION, "samples": sample_count(stats), "layers": layers}
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in stats.items()}
    return checkpoint_bytes(tensors, metadata=meta)


def load_statistics(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a sidecar written by :func:`save_statistics`, checking its structure.

    Raises:
        CheckpointError: unreadable, not a PGU sidecar, or a matrix is not square float64.
    """
    checkpoint = load_checkpoint(path)
    info = checkpoint.meta_json(META_KEY)
    if not isinstance(info, dict) or info.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a PGU statistics sidecar (version {VERSION})")
    stats = dict(checkpoint.tensors)
    if SAMPLES_KEY not in stats:
        raise CheckpointError(f"{path}: the sample count {SAMPLES_KEY!r} is missing")
    bad = [
        name
        for name, t in stats.items()
        if name != SAMPLES_KEY
        and (t.dtype != torch.float64 or t.dim() != 2 or t.shape[0] != t.shape[1])
    ]
    if bad:
        raise CheckpointError(f"{path}: not square float64 matrices: {', '.join(bad[:5])}")
    return stats


def describe(stats: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A JSON-ready summary: sample count and per-layer dimension."""
    return {
        "samples": sample_count(stats),
        "layers": {n: int(t.shape[0]) for n, t in stats.items() if n != SAMPLES_KEY},
    }
