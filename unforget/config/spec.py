"""The run spec: which model, which data, which training recipe.

A spec travels inside every checkpoint (metadata key ``unforget.spec``) so ``apply`` and
``audit`` need only ``--ckpt`` and ``--forget``. Three layers are merged, highest first:
command-line flags > ``--config FILE.toml`` > the checkpoint's metadata. Every problem in the
merged result (unknown keys, bad values, missing data path) is reported in one error.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unforget.config.options import as_plain, build
from unforget.errors import SpecError, collect, param

SPEC_VERSION = 1
DATA_FORMATS = ("auto", "parquet", "arrow", "csv", "jsonl", "imagefolder")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Architecture: a built-in name (``mlp``, ``cnn``, ``resnet18``, ``text``) or a plugin.

    A plugin is an import string ``pkg.module:factory``; the factory is called as
    ``factory(input_shape=..., num_classes=..., **kwargs)`` and returns an ``nn.Module``.
    Plugin code only runs when the user names it (flag or config), never from metadata alone.
    """

    name: str = "mlp"
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_plugin(self) -> bool:
        return ":" in self.name


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where the training data is and how to read it.

    ``path`` is a folder holding one file (or folder) per split, named after the split
    (``train.parquet``, ``heldout.parquet``, ...), or a ``save_to_disk`` DatasetDict. Relative
    paths in a checkpoint's spec resolve against the checkpoint's folder.
    """

    path: str = ""
    format: Literal["auto", "parquet", "arrow", "csv", "jsonl", "imagefolder"] = "auto"
    id_column: str = "id"
    input_columns: tuple[str, ...] = ("image",)
    label_column: str = "label"
    train_split: str = "train"
    heldout_split: str = "heldout"
    # Share of the held-out split that unlearning methods may read (e.g. ∇τ's target loss). The
    # rest is evidence only the audit uses. Chosen by a hash of each ID, so it never depends on
    # row order or seeds.
    reference_fraction: float = 0.25
    max_length: int = 128  # tokens, for text inputs

    def __post_init__(self) -> None:
        if not 0.0 < self.reference_fraction < 1.0:
            raise ValueError("data.reference_fraction must be in (0, 1)")
        if not self.input_columns:
            raise ValueError("data.input_columns must name at least one column")
        if self.train_split == self.heldout_split:
            raise ValueError("data.train_split and data.heldout_split must differ")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How the model was trained. References and the exact-retrain baseline reuse it verbatim."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    epochs: int = 20
    batch_size: int = 128
    label_smoothing: float = 0.0
    augmentation: tuple[str, ...] = ()  # "hflip", "crop"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.lr <= 0:
            problems.append("recipe.lr must be > 0")
        if self.epochs < 1:
            problems.append("recipe.epochs must be >= 1")
        if self.batch_size < 1:
            problems.append("recipe.batch_size must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            problems.append("recipe.label_smoothing must be in [0, 1)")
        unknown = sorted(set(self.augmentation) - {"hflip", "crop"})
        if unknown:
            problems.append(f"recipe.augmentation: unknown {unknown} (valid: hflip, crop)")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything needed to rebuild, retrain and evaluate a model.

    ``num_classes``, ``input_shape`` and ``train_fingerprint`` are facts recorded by
    ``unforget train`` (or filled in from the data on first use), not user choices.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    recipe: Recipe = field(default_factory=Recipe)
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    train_fingerprint: str | None = None
    class_names: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Compact, key-sorted JSON for checkpoint metadata."""
        return json.dumps({"version": SPEC_VERSION, **as_plain(self)}, sort_keys=True)

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "recipe": Recipe}
_FACTS = ("num_classes", "input_shape", "train_fingerprint", "class_names")


def spec_layer_from_json(text: str) -> dict[str, Any]:
    """Parse the ``unforget.spec`` metadata value into a layer for :func:`merge_spec`."""
    try:
        layer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"checkpoint metadata holds an unreadable spec: {exc}") from exc
    if not isinstance(layer, dict):
        raise SpecError("checkpoint metadata holds an unreadable spec: not a JSON object")
    layer.pop("version", None)
    return layer


def spec_layer_from_toml(path: Path) -> dict[str, Any]:
    """Read ``--config FILE.toml``; a relative ``data.path`` resolves against the file's folder."""
    try:
        layer = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise SpecError(f"config file {path} is a directory; name a .toml file") from None
    except OSError as exc:
        raise SpecError(f"config file {path} cannot be read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"config file {path} is not valid TOML: {exc}") from exc
    data = layer.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((path.parent / data["path"]).resolve())
    return layer


def flags_layer(assignments: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted flags (``{"recipe.lr": "0.01"}``) into a nested layer."""
    layer: dict[str, Any] = {}
    for key, value in assignments.items():
        section, dot, name = key.partition(".")
        if dot:
            layer.setdefault(section, {})[name] = value
        else:
            layer[section] = value
    return layer


def merge_spec(*layers: Mapping[str, Any] | None) -> RunSpec:
    """Merge layers, lowest precedence first, into a validated :class:`RunSpec`.

    Raises:
        SpecError: listing every unknown section/key and every bad value at once.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in _SECTIONS and isinstance(value, Mapping):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    problems: list[str] = []
    parts: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _SECTIONS:
            try:
                parts[key] = build(_SECTIONS[key], value, what=key)
            except Exception as exc:  # InputError from build, collected with the rest
                problems.append(str(exc))
        elif key in _FACTS:
            parts[key] = tuple(value) if isinstance(value, list) else value
        else:
            problems.append(f"unknown section {key!r} (valid: {', '.join(_SECTIONS)})")
    if "data" in parts and not parts["data"].path:
        problems.append(
            f"data.path is not set (give {param('data')} or a [data] path in {param('config')})"
        )
    if "data" not in parts and not problems:
        problems.append(
            f"data.path is not set (give {param('data')} or a [data] path in {param('config')})"
        )
    collect(problems, error=SpecError, what="run spec")
    return RunSpec(**parts)


def relocate_data_path(spec: RunSpec, *, base: Path) -> RunSpec:
    """Resolve a relative ``data.path`` against ``base`` (the checkpoint's folder)."""
    path = Path(spec.data.path)
    if path.is_absolute():
        return spec
    data = dataclasses.replace(spec.data, path=str((base / path).resolve()))
    return spec.replace(data=data)


def relativise_data_path(spec: RunSpec, *, base: Path) -> RunSpec:
    """Store ``data.path`` relative to the output checkpoint's folder, so a moved folder works."""
    import os

    path = Path(spec.data.path).resolve()
    try:
        rel = os.path.relpath(path, base.resolve())
    except ValueError:  # different drive on Windows
        return spec
    return spec.replace(data=dataclasses.replace(spec.data, path=rel))
