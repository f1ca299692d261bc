"""``unforget train``: train from a spec and write a self-describing checkpoint."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unforget import __version__
from unforget.config.spec import RunSpec, relativise_data_path
from unforget.data.loaders import Encoder, rows_loader
from unforget.data.splits import (
    InputInfo,
    Split,
    fingerprint,
    input_info,
    load_split,
    reference_mask,
)
from unforget.errors import DataError, InputError
from unforget.io.checkpoint import (
    KEY_LEDGER,
    KEY_PROVENANCE,
    KEY_SPEC,
    KEY_TOKENIZER,
    save_checkpoint,
    state_dict_cpu,
)
from unforget.io.fileio import atomic_write, refuse_existing
from unforget.io.ledger import entries_to_json, load_or_create_key, new_entry
from unforget.io.manifest import Manifest, canonical_ids, resolve_rows
from unforget.methods import get_method
from unforget.methods.base import SavedState, Trained, saved_state
from unforget.runtime import distributed
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent
from unforget.training.evaluate import Score, predict, score
from unforget.training.loop import TrainResult, fit


@dataclass(frozen=True)
class TrainReport:
    """What ``unforget train`` produced."""

    out: Path
    sha256: str
    spec: RunSpec
    train: Score
    heldout: Score
    result: TrainResult
    states: dict[str, Path] = dataclasses.field(default_factory=dict)  # method -> state file
    ledger_key_created: Path | None = None  # the ledger key file, when this run created it


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def train_checkpoint(
    spec: RunSpec,
    *,
    out: Path,
    precision: Precision,
    force: bool = False,
    allow_plugin: bool = False,
    exclude: Manifest | None = None,
    states: tuple[str, ...] = (),
    on_progress: ProgressFn = silent,
) -> TrainReport:
    """Train on the training split, evaluate, and write ``out`` with the spec embedded.

    With ``exclude`` the IDs of that manifest are left out (exact retraining without them); they
    are recorded in the new checkpoint's deletion ledger, so audits treat them as forgotten.

    ``states`` names methods whose saved state (:class:`~unforget.methods.base.SavedState`)
    is written beside ``out`` too, measured on the trained model over all its training rows
    (``--pgu-stats``: ``("pgu",)``, one more forward pass; see :mod:`unforget.methods.pgu_stats`).

    Raises:
        InputError: a name in ``states`` is not a method that keeps state.
        OutputExistsError: ``out`` (or a state file) exists and ``force`` is off (checked
            before training).
    """
    hooks = _state_hooks(states)
    for path in [out, *(hook.path(out) for hook in hooks.values())]:
        refuse_existing(path, force=force)
    train = load_split(spec.data, spec.data.train_split)
    heldout = load_split(spec.data, spec.data.heldout_split)
    if set(train.ids) & set(heldout.ids):
        raise DataError("the training and held-out splits share IDs; held-out must be unseen")
    info = input_info(train, spec.data)
    all_rows = np.arange(len(train), dtype=np.int64)
    ledger = []
    key_created = None
    if exclude is not None:
        key, created = load_or_create_key()
        key_created = key.path if created else None
        ids = canonical_ids(exclude.ids, integer=train.id_is_int, path=exclude.path)
        dropped = resolve_rows(
            ids, train_index=train.index(), heldout_index=heldout.index(), path=exclude.path
        )
        all_rows = np.setdiff1d(all_rows, dropped)
        ledger.append(
            new_entry(
                [train.ids[r] for r in dropped],
                manifest_sha256=exclude.sha256,
                method="retrain",
                time=utc_now(),
                key=key,
            )
        )
    extra_meta: dict[str, str] = {}
    encoder = None
    if info.kind == "text":
        from unforget.data.text import training_encoder

        # A pretrained model directory's own tokenizer, else a vocabulary learnt from the rows
        # actually trained on (exact retraining never sees a forgotten sample's words).
        encoder = training_encoder(
            spec.model, train, spec.data.input_columns[0], rows=all_rows, max_length=info.shape[0]
        )
        extra_meta[KEY_TOKENIZER] = encoder.to_json()
        if spec.model.name == "text":
            kwargs = {**spec.model.kwargs, "vocab_size": encoder.vocab_size}
            spec = spec.replace(model=dataclasses.replace(spec.model, kwargs=kwargs))
    spec = spec.replace(
        num_classes=info.num_classes,
        input_shape=info.shape,
        train_fingerprint=fingerprint(train, spec.data),
        class_names=info.class_names,
    )
    model, result = fit(
        spec,
        split=train,
        rows=all_rows,
        info=info,
        precision=precision,
        seed=spec.recipe.seed,
        encoder=encoder,
        allow_plugin=allow_plugin,
        on_progress=on_progress,
    )
    evidence = np.flatnonzero(~reference_mask(heldout.ids, fraction=spec.data.reference_fraction))
    scores = []
    for split, rows in ((train, all_rows), (heldout, evidence)):
        loader = rows_loader(
            split, rows, spec=spec.data, info=info, encoder=encoder, device=precision.device
        )
        scores.append(score(predict(model, loader, precision=precision)))
    stored = relativise_data_path(spec, base=out.resolve().parent)
    provenance = {
        "tool": f"unforget {__version__}",
        "command": "train",
        "seed": spec.recipe.seed,
        "torch": _torch_version(),
        "device": str(precision.device),
        "time": utc_now(),
        "train_seconds": round(result.seconds, 3),
        "world_size": distributed.world().size,
        "backend": distributed.world().backend,
        "train_accuracy": round(scores[0].accuracy, 6),
        "heldout_accuracy": round(scores[1].accuracy, 6),
    }
    meta: dict[str, Any] = {KEY_SPEC: stored.to_json(), KEY_PROVENANCE: provenance, **extra_meta}
    if ledger:
        meta[KEY_LEDGER] = entries_to_json(ledger)
    measured = measure_states(
        hooks,
        model=model,
        split=train,
        rows=all_rows,
        spec=spec,
        info=info,
        encoder=encoder,
        precision=precision,
        allow_plugin=allow_plugin,
        on_progress=on_progress,
    )
    writer = distributed.is_writer()  # under torchrun only rank 0 writes
    sha = save_checkpoint(out, state_dict_cpu(model), metadata=meta, force=force) if writer else ""
    written = write_states(hooks, measured, out=out, sha256=sha) if writer else {}
    return TrainReport(
        out=out,
        sha256=sha,
        spec=spec,
        train=scores[0],
        heldout=scores[1],
        result=result,
        states=written,
        ledger_key_created=key_created,
    )


def measure_states(
    hooks: dict[str, SavedState],
    *,
    model: Any,
    split: Split,
    rows: np.ndarray,
    spec: RunSpec,
    info: InputInfo,
    encoder: Encoder | None,
    precision: Precision,
    allow_plugin: bool,
    on_progress: ProgressFn,
) -> dict[str, Any]:
    """Each hook's state for ``model`` trained on ``rows`` of ``split``.

    Measured before anything is written (a failure leaves no checkpoint without its states)
    and on every rank (a state may train models of its own, under torchrun too).
    """

    def refit(fold: np.ndarray, seed: int, epochs: int) -> Any:
        recipe = dataclasses.replace(spec.recipe, epochs=epochs)
        fresh, _ = fit(
            spec.replace(recipe=recipe),
            split=split,
            rows=fold,
            info=info,
            precision=precision,
            seed=seed,
            encoder=encoder,
            allow_plugin=allow_plugin,
            on_progress=on_progress,
            task="proxy",
        )
        return fresh

    measured = {}
    for name, hook in hooks.items():
        loader = rows_loader(
            split, rows, spec=spec.data, info=info, encoder=encoder, device=precision.device
        )
        trained = Trained(model, loader, rows, precision, spec, refit)
        measured[name] = hook.measure(trained)
    return measured


def write_states(
    hooks: dict[str, SavedState], measured: dict[str, Any], *, out: Path, sha256: str
) -> dict[str, Path]:
    """Write each measured state beside ``out``, tied to its weights' SHA-256."""
    written = {}
    for name, hook in hooks.items():
        written[name] = hook.path(out)
        atomic_write(written[name], hook.to_bytes(measured[name], checkpoint_sha256=sha256))
    return written


def add_states(
    ckpt: Path,
    states: tuple[str, ...],
    *,
    precision: Precision,
    force: bool = False,
    on_progress: ProgressFn = silent,
) -> dict[str, Path]:
    """Write saved states beside an existing checkpoint (``unforget prepare``).

    Measured on the rows the checkpoint's weights stand for: its training rows minus every
    deletion in its ledger, so an unlearned checkpoint gets states that never saw a deleted row.

    Raises:
        InputError: a name is not a method that keeps state.
        OutputExistsError: a state file exists and ``force`` is off.
    """
    from unforget.workflows.workspace import open_workspace

    hooks = _state_hooks(states)
    for hook in hooks.values():
        refuse_existing(hook.path(ckpt), force=force)
    ws = open_workspace(ckpt)
    rows = np.setdiff1d(np.arange(len(ws.train), dtype=np.int64), ws.ledger_rows())
    measured = measure_states(
        hooks,
        model=ws.load_model(None, precision),
        split=ws.train,
        rows=rows,
        spec=ws.spec,
        info=ws.info,
        encoder=ws.encoder,
        precision=precision,
        allow_plugin=ws.allow_plugin,
        on_progress=on_progress,
    )
    if not distributed.is_writer():
        return {}
    return write_states(hooks, measured, out=ckpt, sha256=ws.checkpoint.sha256)


def _state_hooks(names: tuple[str, ...]) -> dict[str, SavedState]:
    """The saved-state hooks of the methods ``names`` (see :func:`train_checkpoint`)."""
    hooks = {}
    for name in names:
        hook = saved_state(get_method(name))
        if hook is None:
            raise InputError(f"method {name!r} keeps no saved state to write at training time")
        hooks[name] = hook
    return hooks


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
