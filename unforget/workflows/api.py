"""The public Python API: unlearning and auditing from a notebook or a training script.

The functions here are the same use cases the CLI runs (``unforget apply``/``audit``), with
Python values in and out: a model may be an in-memory ``nn.Module`` or a checkpoint path, the
forget set an iterable of IDs or a manifest path, and the result carries the unlearned module
and its receipt. Errors are the library's (:mod:`unforget.errors`) and name parameters, never
command-line flags.

An in-memory module travels through a temporary safetensors file, so the code path (and the
receipt) is exactly the one the CLI uses; the run spec (``spec``: the TOML layout as a dict, or
``config``: a TOML file) must name an architecture that rebuilds it (a built-in one or a
``pkg.module:factory``), because the audit trains reference models from scratch.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from unforget.errors import InputError
from unforget.io.receipt import Receipt

ModelLike = nn.Module | str | Path
ForgetLike = Iterable[str | int] | str | Path


@dataclass(frozen=True)
class Unlearned:
    """What :func:`apply` returns.

    ``model`` is the unlearned module (a copy of an in-memory input, or the module built from
    the output checkpoint); ``checkpoint`` and ``receipt_path`` are None when the outputs were
    written to a temporary folder (in-memory input without ``out``) and removed afterwards.
    ``receipt`` is None when the request had already been applied (``already_applied`` says
    by what), in which case nothing was written and ``model`` is the input.
    """

    model: nn.Module
    receipt: Receipt | None
    checkpoint: Path | None
    receipt_path: Path | None
    already_applied: str | None = None


@contextmanager
def _as_manifest(forget: ForgetLike, folder: Path) -> Iterator[Path]:
    if isinstance(forget, str | Path):
        yield Path(forget)
        return
    ids = [str(i) for i in forget]
    if not ids:
        raise InputError("forget is empty: give at least one training ID")
    path = folder / "forget.txt"
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    yield path


@contextmanager
def _as_checkpoint(
    model: ModelLike, spec: Mapping[str, Any] | None, folder: Path
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A checkpoint path for ``model`` and the spec flags to pass with it."""
    flags = _flags(spec)
    if isinstance(model, str | Path):
        yield Path(model), flags
        return
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module or a checkpoint path, not {type(model)}")
    from unforget.io.checkpoint import save_checkpoint, state_dict_cpu

    path = folder / "input.safetensors"
    save_checkpoint(path, state_dict_cpu(model), metadata={})
    yield path, flags


def _flags(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The spec dict (TOML layout: model/data/recipe tables) as dotted flag assignments."""
    flags: dict[str, Any] = {}
    for table, values in (spec or {}).items():
        if not isinstance(values, Mapping):
            raise InputError(f"spec[{table!r}] must be a table (dict), e.g. spec['data']['path']")
        flags[table] = dict(values)
    return flags


def _precision(device: str) -> Any:
    from unforget.runtime.device import precision_for, resolve_device

    return precision_for(resolve_device(device), amp=True)


def apply(
    model: ModelLike,
    forget: ForgetLike,
    *,
    spec: Mapping[str, Any] | None = None,
    config: str | Path | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
) -> Unlearned:
    """Unlearn ``forget`` from ``model``; the library form of ``unforget apply``.

    Args:
        model: an ``nn.Module`` or a safetensors checkpoint path.
        forget: training IDs to delete, or a manifest path.
        spec: run-spec values (``{"model": {...}, "data": {...}, "recipe": {...}}``); they win
            over ``config``, which wins over the checkpoint's own metadata.
        method: a registered method name (``unforget.methods.METHODS``); None: the default.
        options: the method's options (its ``Config`` fields).
        out: where to write the checkpoint (+ ``.receipt.json``); None writes beside a
            checkpoint input, or to a temporary folder for an in-memory module.
    Returns:
        :class:`Unlearned` with the unlearned module and the receipt.
    Raises:
        unforget.errors.UnforgetError: bad input, or a guard rail stopped the run.
    """
    from unforget.methods import DEFAULT_METHOD
    from unforget.workflows.unlearn import ApplyRequest
    from unforget.workflows.unlearn import apply as run_apply

    with tempfile.TemporaryDirectory(prefix="unforget-api-") as tmp:
        folder = Path(tmp)
        with (
            _as_checkpoint(model, spec, folder) as (ckpt, flags),
            _as_manifest(forget, folder) as manifest,
        ):
            in_memory = isinstance(model, nn.Module)
            target = Path(out) if out is not None else None
            if target is None and in_memory:
                target = folder / "unlearned.safetensors"
            request = ApplyRequest(
                ckpt=ckpt,
                manifest=manifest,
                method=method or DEFAULT_METHOD,
                options={k: str(v) for k, v in (options or {}).items()},
                out=target,
                seed=seed,
                force=force,
                config=Path(config) if config is not None else None,
                flags=flags,
            )
            result = run_apply(request, precision=_precision(device))
            if result.receipt is None:
                unchanged = model if isinstance(model, nn.Module) else _load(ckpt, flags, config)
                return Unlearned(unchanged, None, None, None, result.already_applied)
            unlearned = _load(result.out, flags, config, like=model)
            kept = not (in_memory and out is None)
            return Unlearned(
                model=unlearned,
                receipt=result.receipt,
                checkpoint=result.out if kept else None,
                receipt_path=result.receipt_path if kept else None,
            )


def _load(
    path: Path,
    flags: dict[str, Any],
    config: str | Path | None,
    *,
    like: ModelLike | None = None,
) -> nn.Module:
    """The module for checkpoint ``path``: a copy of ``like`` when it is a module."""
    from unforget.io.checkpoint import load_checkpoint, load_into

    if isinstance(like, nn.Module):
        module = copy.deepcopy(like)
        load_into(module, load_checkpoint(path))
        return module
    import torch

    from unforget.runtime.device import precision_for
    from unforget.workflows.workspace import open_workspace

    ws = open_workspace(path, config=Path(config) if config is not None else None, flags=flags)
    return ws.load_model(None, precision_for(torch.device("cpu")))


def audit(
    model: ModelLike,
    forget: ForgetLike,
    *,
    spec: Mapping[str, Any] | None = None,
    config: str | Path | None = None,
    original: str | Path | None = None,
    refs: int | None = 4,
    seed: int = 0,
    device: str = "auto",
    jobs: int = 1,
    ref_source: str = "retain",
) -> Any:
    """Membership-inference audit of ``forget`` in ``model``; the library form of
    ``unforget audit`` (``jobs`` and ``ref_source`` as ``--jobs`` and ``--ref-source``).
    Returns the :class:`unforget.workflows.audit.AuditReport` (its ``verdict.status`` is
    PASS / FAIL-LEAK / FAIL-OVER / INCONCLUSIVE, ``verdict.exit_code`` the CLI's exit code)."""
    from unforget.workflows.audit import AuditRequest, run_audit

    with tempfile.TemporaryDirectory(prefix="unforget-api-") as tmp:
        folder = Path(tmp)
        with (
            _as_checkpoint(model, spec, folder) as (ckpt, flags),
            _as_manifest(forget, folder) as manifest,
        ):
            request = AuditRequest(
                ckpt=ckpt,
                manifest=manifest,
                original=Path(original) if original is not None else None,
                refs=refs,
                seed=seed,
                config=Path(config) if config is not None else None,
                flags=flags,
                jobs=jobs,
                ref_source=ref_source,
            )
            return run_audit(request, precision=_precision(device))
