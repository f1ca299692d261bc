"""Export a checkpoint of :func:`unforget.models.hf.sequence_classifier` as a model directory.

After ``unforget apply`` the unlearned weights live in an unforget checkpoint; serving stacks
load HuggingFace directories. :func:`export_model_dir` writes one that
``AutoModelForSequenceClassification.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load as they are: ``config.json`` (with the class names as labels), ``model.safetensors``,
the checkpoint's own tokenizer (``tokenizer.json``, plus the base directory's tokenizer
config files), and ``unforget.json`` with the checkpoint's spec, provenance and deletion
ledger summary (counts and manifest hashes, no ID hashes), so the exported model still says
what was deleted from it.
The CLI command ``unforget export-hf`` calls :func:`export_model_dir`.

The directory is assembled in a temporary folder beside ``out`` and renamed into place, so a
failure never leaves a half-written model behind.

The other direction: :func:`load_model_dir` reads a ``save_pretrained`` directory fine-tuned
elsewhere as a checkpoint (``apply``/``audit --ckpt DIR``), and :func:`save_model_dir` writes the
unlearned weights back as such a directory, its ``model.safetensors`` carrying unforget's spec,
provenance and ledger in the safetensors metadata (transformers ignores extra metadata keys).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unforget.errors import CheckpointError, InputError, OutputExistsError, SpecError, param
from unforget.io import checkpoint as ckpt_io
from unforget.io.ledger import entries_from_json, entries_summary
from unforget.io.paths import is_under, same_file
from unforget.models.hf import (
    PREFIX,
    load_config,
    model_directory,
    quiet_transformers,
    strip_prefix,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

FACTORY = "unforget.models.hf:sequence_classifier"
WEIGHTS = "model.safetensors"
# Files of a model directory that are not copied into an unlearned copy of it: the old weights
# (rewritten), pickles (never read) and the export record (rewritten by export_model_dir).
_NOT_COPIED = {WEIGHTS, "model.safetensors.index.json", "pytorch_model.bin", "unforget.json"}
# Tokenizer files AutoTokenizer may read besides tokenizer.json; copied when the base has them.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
)


@dataclass(frozen=True)
class Export:
    """What :func:`export_model_dir` wrote."""

    out: Path
    checkpoint_sha256: str
    files: tuple[str, ...]


def export_model_dir(
    ckpt: Path, out: Path, *, base: Path | None = None, force: bool = False
) -> Export:
    """Write ``ckpt`` (a sequence-classifier checkpoint) as a HuggingFace model directory.

    Args:
        ckpt: checkpoint written by ``unforget train`` or ``apply`` for the hf plugin model.
        out: directory to create.
        base: the pretrained model directory the checkpoint was trained from; default: the
            ``path`` recorded in the checkpoint's spec. Only its config and tokenizer files
            are read, never its weights.
        force: replace an existing ``out``.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is off.
        CheckpointError: not an hf plugin checkpoint, or tensors that do not fit the config.
        SpecError: the base directory is missing or incomplete, or transformers is absent.
    """
    for name, source in (("the checkpoint", ckpt), (param("base"), base)):
        if source is not None and (is_under(source, out) or same_file(source, out)):
            raise InputError(
                f"{param('out')} {out} would replace {name} {source}; unforget never "
                "overwrites an input"
            )
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass {param('force', True)} to replace it")
    checkpoint = ckpt_io.load_checkpoint(ckpt)
    spec = checkpoint.meta_json(ckpt_io.KEY_SPEC, default={}) or {}
    directory = model_directory(base or _recorded_base(checkpoint.path, spec), need_weights=False)
    tokenizer = checkpoint.metadata.get(ckpt_io.KEY_TOKENIZER)
    if not tokenizer:
        raise CheckpointError(
            f"{checkpoint.path} holds no tokenizer; it was not written by "
            "`unforget train` for a text model"
        )
    names = [str(n) for n in spec.get("class_names") or []]
    model = _load_model(
        checkpoint, directory, num_classes=_num_classes(checkpoint, spec), names=names
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(str(staging), safe_serialization=True)
        (staging / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (directory / name).is_file():
                shutil.copyfile(directory / name, staging / name)
        record = {
            "source": str(checkpoint.path),
            "source_sha256": checkpoint.sha256,
            "spec": checkpoint.meta_json(ckpt_io.KEY_SPEC),
            "provenance": checkpoint.meta_json(ckpt_io.KEY_PROVENANCE),
            # counts and manifest hashes only: an exported model must not carry ID hashes
            "ledger": entries_summary(
                entries_from_json(checkpoint.meta_json(ckpt_io.KEY_LEDGER, default=[]))
            ),
        }
        (staging / "unforget.json").write_text(
            json.dumps(record, indent=2, sort_keys=True), encoding="utf-8"
        )
        files = tuple(sorted(p.name for p in staging.iterdir()))
        _ordinary_modes(staging)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Export(out=out, checkpoint_sha256=checkpoint.sha256, files=files)


def _recorded_base(ckpt: Path, spec: dict[str, object]) -> Path:
    model = spec.get("model")
    if not isinstance(model, dict) or model.get("name") != FACTORY:
        raise CheckpointError(
            f"{ckpt} was not trained with the model {FACTORY}; only those "
            "checkpoints export to a HuggingFace directory"
        )
    kwargs = model.get("kwargs")
    path = kwargs.get("path") if isinstance(kwargs, dict) else None
    if not isinstance(path, str) or not path:
        raise SpecError(
            f"{ckpt}: its spec names no model.kwargs.path; pass the base model directory explicitly"
        )
    return Path(path)


def _num_classes(checkpoint: ckpt_io.Checkpoint, spec: dict[str, object]) -> int:
    count = spec.get("num_classes")
    if isinstance(count, int) and count > 0:
        return count
    raise CheckpointError(f"{checkpoint.path}: its spec records no num_classes")


def _load_model(
    checkpoint: ckpt_io.Checkpoint, directory: Path, *, num_classes: int, names: list[str]
) -> PreTrainedModel:
    """The base architecture with a ``num_classes`` head, filled with the checkpoint's tensors."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(directory, num_classes=num_classes)
    if len(names) == num_classes:
        config.id2label = dict(enumerate(names))
        config.label2id = {name: i for i, name in enumerate(names)}
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_config(config)
    state = strip_prefix(checkpoint.tensors)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{checkpoint.path} does not fit {directory}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} misshapen tensors (first: "
            f"{', '.join((missing + unexpected + shapes)[:3])})"
        )
    model.load_state_dict(state, strict=True)
    return model


def _replace(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``; an existing ``out`` is removed only once the new one is in."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    _remove(old)
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        with contextlib.suppress(OSError):
            old.rename(out)
        raise
    _remove(old)


def _ordinary_modes(folder: Path) -> None:
    """Give the staging folder (``mkdtemp`` makes it 0700) and its files the modes the umask
    gives any new file, so whoever serves the model next can read it."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def is_model_dir(path: Path) -> bool:
    """True for a HuggingFace model directory (a folder with ``config.json``)."""
    return path.is_dir() and (path / "config.json").is_file()


def model_dir_spec(directory: Path) -> dict[str, object]:
    """The ``model`` spec layer of a model directory: unforget's sequence classifier around the
    directory's own config and tokenizer. ``pretrained`` is off because the directory's weights
    are loaded over it; a ``[model]`` section in ``--config`` naming the base model wins (so
    reference models and retraining start from the base weights instead of a random init)."""
    return {"name": FACTORY, "kwargs": {"path": str(directory.resolve()), "pretrained": False}}


def load_model_dir(path: Path) -> ckpt_io.Checkpoint:
    """Read a ``save_pretrained`` directory as a checkpoint of :class:`SequenceClassifier`.

    Tensor names get the wrapper's ``model.`` prefix; the directory's ``tokenizer.json`` goes
    into the metadata where :func:`unforget.data.text.encoder_from_checkpoint` looks for it;
    metadata unforget wrote earlier (spec, ledger) is kept. ``sha256`` is the weights file's
    own hash.

    Raises:
        SpecError: no tokenizer.json or config.json (see :func:`model_directory`).
        CheckpointError: no ``model.safetensors`` (sharded or pickle weights are not read).
    """
    directory = model_directory(path, need_weights=False)
    weights = directory / WEIGHTS
    if not weights.is_file():
        sharded = (directory / "model.safetensors.index.json").is_file()
        how = (
            "sharded weights are not supported; save_pretrained(..., max_shard_size='10GB')"
            if sharded
            else "save it with save_pretrained(..., safe_serialization=True)"
        )
        raise CheckpointError(f"model directory {directory} has no {WEIGHTS}; {how}")
    inner = ckpt_io.load_checkpoint(weights)
    metadata = dict(inner.metadata)
    metadata[ckpt_io.KEY_TOKENIZER] = (directory / "tokenizer.json").read_text(encoding="utf-8")
    return ckpt_io.Checkpoint(
        path=weights,
        tensors={PREFIX + k: v for k, v in inner.tensors.items()},
        metadata=metadata,
        sha256=inner.sha256,
    )


def save_model_dir(
    out: Path,
    state: Mapping[str, torch.Tensor],
    *,
    source: Path,
    metadata: Mapping[str, object],
    force: bool = False,
) -> str:
    """Write ``state`` (a :class:`SequenceClassifier` state dict) as a model directory.

    Everything but the weights is copied from the input directory ``source`` (config, tokenizer
    files), so transformers loads ``out`` exactly as it loaded ``source``. Assembled in a
    staging folder and renamed into place. Returns the new ``model.safetensors``'s SHA-256.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is off.
    """
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass {param('force', True)} to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for item in sorted(source.iterdir()):
            if item.is_file() and item.name not in _NOT_COPIED:
                shutil.copyfile(item, staging / item.name)
        meta = {k: v for k, v in metadata.items() if k != ckpt_io.KEY_TOKENIZER}
        sha = ckpt_io.save_checkpoint(staging / WEIGHTS, strip_prefix(dict(state)), metadata=meta)
        _ordinary_modes(staging)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sha
