"""Resolve what a command works on: checkpoint, merged run spec, data splits, ledger.

``apply``, ``audit`` and ``inspect`` all start here, so the precedence rule (flags > config >
checkpoint metadata), relative-path resolution and the training-data fingerprint check are
written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unforget.config.spec import (
    RunSpec,
    flags_layer,
    merge_spec,
    relocate_data_path,
    spec_layer_from_json,
    spec_layer_from_toml,
)
from unforget.data.loaders import Batch, Encoder, rows_loader
from unforget.data.splits import (
    InputInfo,
    Split,
    fingerprint,
    fingerprint_matches,
    input_info,
    load_split,
    reference_mask,
)
from unforget.errors import DataError, SpecError, param
from unforget.io import checkpoint as ckpt_io
from unforget.io.cache import Deleted
from unforget.io.checkpoint import Checkpoint
from unforget.io.ledger import LedgerEntry, covered, entries_from_json
from unforget.io.manifest import Manifest, canonical_ids, read_manifest, resolve_rows
from unforget.models import build_model
from unforget.runtime.device import Precision
from unforget.training.loop import prepare_model

RETAIN_SAMPLE = 2048  # retain rows in the fixed sample accuracy is checked on


@dataclass(frozen=True)
class Deletion:
    """One deletion request resolved to rows, once, for every step that needs them.

    ``forget``/``retain`` are training rows (retain = the rest minus every earlier deletion in
    the ledger); ``reference`` are the held-out rows methods may read (∇τ's and proxy-distill's
    reference split, recorded in the receipt), ``evidence`` the held-out rows kept for
    evaluation and the audit. ``removed_classes``: classes all of whose remaining training rows
    are forgotten (a class removal; a model retrained without them never predicts them).
    """

    forget: np.ndarray
    retain: np.ndarray
    reference: np.ndarray
    evidence: np.ndarray
    removed_classes: tuple[int, ...]

    def retain_sample(self, rng: np.random.Generator, size: int = RETAIN_SAMPLE) -> np.ndarray:
        """A fixed, sorted sample of the retain rows drawn from ``rng`` (cheap accuracy checks;
        the caller's generator, so the draws that follow it stay where they were)."""
        return np.sort(rng.choice(self.retain, size=min(size, len(self.retain)), replace=False))


@dataclass(frozen=True)
class Workspace:
    """A checkpoint with its resolved spec and data, ready for apply/audit."""

    checkpoint: Checkpoint
    spec: RunSpec
    train: Split
    heldout: Split
    info: InputInfo
    ledger: tuple[LedgerEntry, ...]
    encoder: Encoder | None
    allow_plugin: bool
    data_changed: bool
    fingerprint: str = ""  # of the training split as it is on disk now (``v2:``)
    model_dir: Path | None = None  # the HuggingFace directory --ckpt named, if it was one

    def reference_rows(self) -> np.ndarray:
        """Held-out rows methods may read (∇τ's target); the audit never uses them."""
        mask = reference_mask(self.heldout.ids, fraction=self.spec.data.reference_fraction)
        return np.flatnonzero(mask)

    def evidence_rows(self) -> np.ndarray:
        """Held-out rows reserved for evaluation and the audit."""
        mask = reference_mask(self.heldout.ids, fraction=self.spec.data.reference_fraction)
        return np.flatnonzero(~mask)

    def ledger_rows(self) -> np.ndarray:
        """Training rows removed by earlier deletions recorded in the ledger."""
        if not self.ledger:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.asarray(covered(self.ledger, list(self.train.ids)), dtype=bool))

    def forget_rows(self, manifest: Manifest) -> np.ndarray:
        """Training rows named by ``manifest`` (validated; see :func:`resolve_rows`)."""
        ids = canonical_ids(manifest.ids, integer=self.train.id_is_int, path=manifest.path)
        return resolve_rows(
            ids,
            train_index=self.train.index(),
            heldout_index=self.heldout.index(),
            path=manifest.path,
        )

    def deletion(self, forget: np.ndarray) -> Deletion:
        """Resolve the rows of one deletion of training rows ``forget`` (see :class:`Deletion`)."""
        retain = self.retain_rows(forget)
        labels = self.train.labels
        # a class is removed whole when no retained row has it (earlier deletions excluded)
        removed = np.setdiff1d(np.unique(labels[forget]), np.unique(labels[retain]))
        mask = reference_mask(self.heldout.ids, fraction=self.spec.data.reference_fraction)
        return Deletion(
            forget=forget,
            retain=retain,
            reference=np.flatnonzero(mask),
            evidence=np.flatnonzero(~mask),
            removed_classes=tuple(int(c) for c in removed),
        )

    def loader(
        self, split: Split, rows: np.ndarray, *, device: torch.device, **options: Any
    ) -> torch.utils.data.DataLoader[Batch]:
        """:func:`~unforget.data.loaders.rows_loader` with this workspace's columns and encoder
        (``options``: its batch size, shuffle, seed, workers; a reading loader by default)."""
        return rows_loader(
            split,
            rows,
            spec=self.spec.data,
            info=self.info,
            encoder=self.encoder,
            device=device,
            **options,
        )

    def load_model(self, path: Path | None, precision: Precision) -> nn.Module:
        """Build the spec's architecture, load ``path`` (default: this checkpoint) into it."""
        model = build_model(
            self.spec.model,
            input_shape=self.info.shape,
            num_classes=self.info.num_classes,
            allow_plugin=self.allow_plugin,
        )
        source = self.checkpoint if path is None else read_checkpoint(path)
        ckpt_io.load_into(model, source)
        return prepare_model(model, precision)

    def retain_rows(self, forget: np.ndarray) -> np.ndarray:
        """Train rows minus ``forget`` minus everything already in the ledger."""
        drop = np.zeros(len(self.train), dtype=bool)
        drop[forget] = True
        drop[self.ledger_rows()] = True
        return np.flatnonzero(~drop)


def read_checkpoint(path: Path) -> Checkpoint:
    """A safetensors file, or a HuggingFace ``save_pretrained`` directory read as one."""
    from unforget.workflows.export_hf import is_model_dir, load_model_dir

    return load_model_dir(path) if is_model_dir(path) else ckpt_io.load_checkpoint(path)


def weights_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of a model directory's ``model.safetensors`` (the hash
    receipts record for a directory)."""
    from unforget.io.fileio import sha256_file
    from unforget.workflows.export_hf import WEIGHTS, is_model_dir

    return sha256_file(path / WEIGHTS if is_model_dir(path) else path)


def spec_from_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's spec layer with ``data.path`` resolved against its folder."""
    raw = checkpoint.metadata.get(ckpt_io.KEY_SPEC)
    if raw is None:
        return {}
    layer = spec_layer_from_json(raw)
    data = layer.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        base = checkpoint.path.resolve().parent
        data["path"] = str((base / data["path"]).resolve())
    return layer


def resolve_spec(
    checkpoint: Checkpoint | None,
    *,
    config: Path | None,
    flags: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
) -> tuple[RunSpec, bool]:
    """Merge flags > config > checkpoint metadata; return the spec and whether the user named
    a plugin model themselves (flag or config), which is what allows plugin code to run.

    ``model`` replaces the metadata's ``[model]`` section (a model directory says itself what
    it is); config and flags still win over it."""
    meta = spec_from_checkpoint(checkpoint) if checkpoint else {}
    if model is not None:
        meta["model"] = dict(model)
    file_layer = spec_layer_from_toml(config) if config else {}
    flag_layer = flags_layer(flags)
    spec = merge_spec(meta, file_layer, flag_layer)
    named = [
        layer.get("model", {}).get("name")
        for layer in (file_layer, flag_layer)
        if isinstance(layer.get("model"), dict)
    ]
    allow_plugin = spec.model.is_plugin and spec.model.name in named
    return relocate_data_path(spec, base=Path.cwd()), allow_plugin


def data_folder_of(
    ckpt: Path, *, config: Path | None, flags: Mapping[str, Any] | None = None
) -> Path | None:
    """The data folder a command on ``ckpt`` would read, from metadata only (no tensors), for
    path checks before any work; None when it cannot be told yet (the real error comes later)."""
    from unforget.errors import UnforgetError

    try:
        meta = ckpt_io.read_metadata(ckpt) if ckpt.is_file() else {}
        stub = Checkpoint(path=ckpt, tensors={}, metadata=meta, sha256="")
        spec, _ = resolve_spec(stub, config=config, flags=flags or {})
    except (UnforgetError, OSError, ValueError):
        return None
    return Path(spec.data.path) if spec.data.path else None


def open_workspace(
    checkpoint_path: Path,
    *,
    config: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    accept_data_change: bool = False,
) -> Workspace:
    """Load checkpoint, spec and data, and check the data is what the model was trained on.

    Raises:
        CheckpointError, SpecError, DataError: with one line each saying what to fix.
    """
    from unforget.workflows.export_hf import FACTORY, is_model_dir, model_dir_spec

    model_dir = checkpoint_path if is_model_dir(checkpoint_path) else None
    checkpoint = read_checkpoint(checkpoint_path)
    spec, allow_plugin = resolve_spec(
        checkpoint,
        config=config,
        flags=flags or {},
        model=model_dir_spec(model_dir) if model_dir else None,
    )
    # A model directory is run by unforget's own HF wrapper, not by code a file names.
    allow_plugin = allow_plugin or (model_dir is not None and spec.model.name == FACTORY)
    train = load_split(spec.data, spec.data.train_split)
    heldout = load_split(spec.data, spec.data.heldout_split)
    overlap = set(train.ids) & set(heldout.ids)
    if overlap:
        raise DataError(
            f"{len(overlap)} IDs are in both the training and held-out split "
            f"(first: {', '.join(sorted(overlap)[:3])}); held-out must be unseen"
        )
    info = input_info(train, spec.data)
    changed, current = _data_changed(spec, train)
    if changed and not accept_data_change:
        legacy = not (spec.train_fingerprint or "").startswith("v2:")
        raise DataError(
            f"the training split in {spec.data.path} is not the data this model was trained on "
            "(fingerprint of IDs, labels and inputs differs), so IDs could resolve to the wrong "
            f"rows; pass {param('accept_data_change', True)} if the change is intended (it is "
            "recorded)"
            + (
                "; the checkpoint holds an older fingerprint that also changes when only the "
                "row order changed"
                if legacy
                else ""
            )
        )
    if spec.num_classes is not None and spec.num_classes != info.num_classes:
        raise SpecError(
            f"the model has {spec.num_classes} classes but the data has {info.num_classes}"
        )
    spec = with_data_facts(spec, info)
    encoder = _encoder(checkpoint, info)
    return Workspace(
        checkpoint=checkpoint,
        spec=spec,
        train=train,
        heldout=heldout,
        info=info,
        ledger=entries_from_json(checkpoint.meta_json(ckpt_io.KEY_LEDGER)),
        encoder=encoder,
        allow_plugin=allow_plugin,
        data_changed=changed,
        fingerprint=current,
        model_dir=model_dir,
    )


def open_request(
    checkpoint_path: Path,
    manifest_path: Path,
    *,
    config: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    accept_data_change: bool = False,
) -> tuple[Workspace, Manifest, np.ndarray]:
    """What ``apply`` and ``audit`` start from: the manifest (read first: a bad list fails
    before any data is loaded), the workspace, and the training rows the manifest names.

    Raises:
        InputError, CheckpointError, SpecError, DataError: one line each.
    """
    manifest = read_manifest(manifest_path)
    ws = open_workspace(
        checkpoint_path, config=config, flags=flags, accept_data_change=accept_data_change
    )
    return ws, manifest, ws.forget_rows(manifest)


def with_data_facts(spec: RunSpec, info: InputInfo) -> RunSpec:
    """Fill the facts a checkpoint made elsewhere does not record (class count, input shape,
    class names) from the data, so methods never guess them (a foreign 10-class model once
    reached ∇τ with ``num_classes`` unset and crashed on a 2-class default)."""
    return spec.replace(
        num_classes=spec.num_classes if spec.num_classes is not None else info.num_classes,
        input_shape=spec.input_shape if spec.input_shape is not None else info.shape,
        class_names=spec.class_names or info.class_names,
    )


def _data_changed(spec: RunSpec, train: Split) -> tuple[bool, str]:
    """Compare the recorded fingerprint (if any) with the data; return (changed, current)."""
    if not spec.train_fingerprint:
        return False, fingerprint(train, spec.data)
    matches, current = fingerprint_matches(spec.train_fingerprint, train, spec.data)
    return not matches, current


def _encoder(checkpoint: Checkpoint, info: InputInfo) -> Encoder | None:
    if info.kind != "text":
        return None
    from unforget.data.text import encoder_from_checkpoint

    return encoder_from_checkpoint(checkpoint, max_length=info.shape[0])


def deleted_rows(ckpt: Path) -> Deleted:
    """What ``ckpt``'s deletion ledger removed, as rows of its training data (needs the key);
    ``unforget cache prune`` removes cached models trained on any of them."""
    ws = open_workspace(ckpt, accept_data_change=True)
    known = {ws.fingerprint, *([ws.spec.train_fingerprint] if ws.spec.train_fingerprint else [])}
    return Deleted(fingerprints=frozenset(known), rows=ws.ledger_rows())
