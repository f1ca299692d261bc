"""Several processes under ``torchrun``: who this process is, its device, and the few collectives
the loops need.

``torchrun --nproc_per_node N -m unforget train|apply|audit …`` starts N copies of the command
with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment. :func:`init_from_env` reads
them, joins the process group (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per local rank) and
returns the device to use. Without those variables nothing happens and every function here is
the single-process identity, so a plain run never touches ``torch.distributed``.

Conventions (DESIGN §6):

- Data parallel: every rank holds the same weights; the shuffled training streams (retain and
  forget) are sharded with :func:`shard_sampler`, each rank taking ``⌈B/W⌉`` rows of every
  global batch of ``B`` (W = world size), and gradients are averaged across ranks (by
  ``DistributedDataParallel`` in :func:`unforget.training.loop.fit`, by
  :class:`unforget.training.step.TrainStep` in the methods' loops). The average of the ranks'
  mean losses is the mean loss of the global batch, so one step means the same as in one
  process.
- Evaluation loaders (``shuffle=False``) are not sharded: each rank evaluates the same rows
  with the same weights, so checks (guard rails, stop rules) see the same numbers everywhere;
  :func:`any_rank` reduces each decision once more, so no rank can leave a loop alone.
- One writer: only rank 0 (:func:`is_writer`) writes checkpoints, receipts, caches and stdout.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True when started by ``torchrun`` (or any launcher that sets ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """The current process group (a single process when none is initialised)."""
    if not _initialised():
        return World()
    import torch.distributed as dist

    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group described by the environment; return this rank's device.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) returns ``device`` unchanged. On CUDA each
    process takes GPU ``LOCAL_RANK`` (an explicit ``cuda:N`` is overridden: one GPU per rank)
    and the ``nccl`` backend; on CPU the ``gloo`` backend. Idempotent.
    """
    if not launched():
        return device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # long enough for one rank training an audit reference while the others wait
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=6))
        atexit.register(_shutdown)
    return device


def is_writer() -> bool:
    """Only rank 0 writes files and stdout."""
    return world().rank == 0


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop or failure decision)."""
    if not _initialised():
        return flag
    return bool(reduce(torch.tensor([1.0 if flag else 0.0]), "max").item() > 0)


def reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """``tensor`` reduced elementwise over ranks (``op``: "sum" or "max"), the same on every
    rank, on this tensor's device and dtype; ``tensor`` itself when not distributed."""
    if not _initialised():
        return tensor
    import torch.distributed as dist

    out = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_ranks(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on all of them (e.g. a file every node has)."""
    return not any_rank(not flag)


def average_gradients(params: list[nn.Parameter]) -> None:
    """``p.grad ← mean over ranks of p.grad``, in one flat all-reduce (missing grads count 0).

    For loops that take their own gradients (``torch.autograd.grad``, ``functional_call``)
    where DistributedDataParallel's hooks never fire; the same maths as DDP's averaging.
    """
    if not _initialised():
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def average(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (``tensor`` itself when not distributed)."""
    if not _initialised():
        return tensor
    return reduce(tensor, "sum") / world().size


def agreed(*values: float) -> tuple[float, ...]:
    """The mean of each of ``values`` over ranks, in one all-reduce (float64): the numbers a
    check decides on, so every rank takes the same branch even where an evaluation that should
    be identical is not bit for bit (e.g. non-deterministic GPU kernels). The values
    themselves when not distributed."""
    if not _initialised():
        return values
    out = reduce(torch.tensor(values, dtype=torch.float64), "sum") / world().size
    return tuple(float(v) for v in out.tolist())


def average_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over ranks of each tensor, DIFFERENTIABLE (``torch.distributed.nn``): for a
    quantity that enters a loss non-linearly, e.g. a look-ahead step θ' = θ − η·∇L_F whose
    gradient must be that of the global batch, not of this rank's share. The backward of the
    all-reduce sums the upstream gradients of all ranks, so after the usual gradient average
    every rank holds the gradient of the global objective. Identity when not distributed."""
    if not _initialised() or not tensors:
        return tensors
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_reduce

    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat = all_reduce(flat) / dist.get_world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def average_buffers(model: nn.Module) -> None:
    """Floating-point buffers (BatchNorm running statistics) ← their mean over ranks: a model
    trained in train mode outside DistributedDataParallel updated them on its own shard."""
    if not _initialised():
        return
    with torch.no_grad():
        for buffer in model.buffers():
            if torch.is_floating_point(buffer):
                buffer.copy_(average(buffer))


def replicas_agree(model: nn.Module) -> bool:
    """True when every rank holds bitwise the same parameters (checked with a float64 digest
    of each tensor: sum and position-weighted sum)."""
    if not _initialised():
        return True
    import torch.distributed as dist

    with torch.no_grad():
        parts = []
        for p in model.state_dict().values():
            if not torch.is_floating_point(p):
                continue
            flat = p.detach().reshape(-1).double()
            weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            parts.append(torch.stack([flat.sum(), (flat * weights).sum()]))
        digest = torch.cat(parts) if parts else torch.zeros(2, dtype=torch.float64)
        digest = digest.to(_collective_device())
        gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, digest)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def barrier() -> None:
    if _initialised():
        import torch.distributed as dist

        dist.barrier()


def shard_sampler(
    dataset: torch.utils.data.Dataset, *, seed: int
) -> torch.utils.data.Sampler[int] | None:
    """This rank's share of a shuffled stream (None when not distributed).

    A :class:`~torch.utils.data.DistributedSampler` (same permutation on every rank, rank r
    takes positions r, r+W, …; padded by repetition to a multiple of W) that advances its
    epoch on every pass, so each pass is reshuffled without the loops calling ``set_epoch``.
    """
    if not _initialised():
        return None
    current = world()
    return _EpochSampler(
        dataset, num_replicas=current.size, rank=current.rank, shuffle=True, seed=seed
    )


def whole(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """The unsharded, unshuffled version of a loader made with :func:`shard_sampler` (for a
    pass that must see every row on every rank, e.g. statistics); other loaders unchanged."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, _EpochSampler):
        return loader
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=(loader.batch_size or 1) * sampler.num_replicas,
        shuffle=False,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def global_batch_size(loader: torch.utils.data.DataLoader, default: int = 64) -> int:
    """Rows one step reads over all ranks: ``batch_size × W`` for a loader made with
    :func:`shard_sampler` (``⌈B/W⌉·W``, which :func:`~unforget.data.loaders.make_loader`
    divides back to the same per-rank size), ``batch_size`` otherwise (``default`` if None)."""
    size = loader.batch_size or default
    sampler = getattr(loader, "sampler", None)
    return size * sampler.num_replicas if isinstance(sampler, _EpochSampler) else size


class _EpochSampler(torch.utils.data.DistributedSampler):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        order = super().__iter__()
        self.set_epoch(self.epoch + 1)
        return order


def wrap(model: nn.Module) -> nn.Module:
    """``model`` inside DistributedDataParallel when distributed, else ``model`` itself."""
    if not _initialised():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


_LOCAL = [False]  # inside local(): behave as a single process


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Within the block this rank works alone: no sharding, no DDP, no collectives, and it
    counts as a writer (e.g. training one audit reference per rank)."""
    previous, _LOCAL[0] = _LOCAL[0], True
    try:
        yield
    finally:
        _LOCAL[0] = previous


def _initialised() -> bool:
    return (
        not _LOCAL[0]
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
