"""Safe, symmetric, self-describing checkpoint I/O (safetensors only; never unpickle).

Metadata keys (all values are JSON strings, as safetensors metadata must be ``Dict[str, str]``):

- ``unforget.spec``: the run spec (:mod:`unforget.config.spec`).
- ``unforget.provenance``: what produced this file (tool, method, options, hashes, time).
- ``unforget.ledger``: every deletion applied so far, as salted ID hashes
  (:mod:`unforget.io.ledger`).
- ``unforget.aliases``: tied weights saved once, ``{"dropped name": "kept name"}``.
- ``unforget.tokenizer``: a text model's tokenizer JSON (when there is one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unforget.errors import CheckpointError
from unforget.io.fileio import atomic_write, refuse_existing, sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

KEY_SPEC = "unforget.spec"
KEY_PROVENANCE = "unforget.provenance"
KEY_LEDGER = "unforget.ledger"
KEY_ALIASES = "unforget.aliases"
KEY_TOKENIZER = "unforget.tokenizer"
FORMAT_VERSION = "1"

_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: tensors on CPU, metadata strings, and the file's SHA-256."""

    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str]
    sha256: str

    def meta_json(self, key: str, default: Any = None) -> Any:
        """Decode one JSON metadata value; a corrupt value is a :class:`CheckpointError`."""
        if key not in self.metadata:
            return default
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.path}: metadata {key!r} is not valid JSON") from exc

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a safetensors file. Pickle formats are refused: loading them can run arbitrary code.

    Raises:
        CheckpointError: missing file, pickle file, or a file that is not valid safetensors.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path} looks like a pickle checkpoint, which unforget never loads (it can run code); "
            'convert it once with: python -c "import torch, safetensors.torch as s; '
            f"s.save_file(torch.load('{path.name}', weights_only=True), 'model.safetensors')\""
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    aliases = _decode_aliases(metadata, path)
    for dropped, kept in aliases.items():
        if kept not in tensors:
            raise CheckpointError(f"{path}: tied weight {dropped!r} points at missing {kept!r}")
        tensors[dropped] = tensors[kept]
    return Checkpoint(path=path, tensors=tensors, metadata=metadata, sha256=sha256_file(path))


def save_checkpoint(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, Any],
    force: bool = False,
) -> str:
    """Write ``state`` with ``metadata`` atomically; return the SHA-256 of the bytes written.

    The hash is taken from the bytes in memory, never by re-reading ``path``: another process
    may replace the file in between, and a receipt must describe what *this* run wrote.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is off.
    """
    target = Path(path)
    refuse_existing(target, force=force)
    return atomic_write(target, checkpoint_bytes(state, metadata=metadata))


def checkpoint_bytes(state: Mapping[str, torch.Tensor], *, metadata: Mapping[str, Any]) -> bytes:
    """The safetensors bytes of ``state`` with ``metadata``.

    Tensors that share storage (tied weights) are written once and recorded as aliases, so the
    file stays valid safetensors and loads back into the same module. Non-string metadata values
    are JSON-encoded.
    """
    from safetensors.torch import save

    tensors, aliases = _dedupe(state)
    meta = {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()
    }
    meta["format"] = "pt"
    meta["unforget.format"] = FORMAT_VERSION
    if aliases:
        meta[KEY_ALIASES] = json.dumps(aliases, sort_keys=True)
    return bytes(save(tensors, metadata=meta))


def read_metadata(path: str | Path) -> dict[str, str]:
    """Only the metadata of a safetensors file (no tensors are read).

    Raises:
        CheckpointError: missing or unreadable file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on CPU, contiguous, in a fixed key order."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def load_into(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load tensors into ``model`` strictly, naming the first mismatches on failure.

    Raises:
        CheckpointError: keys or shapes do not fit the spec's architecture.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in checkpoint.tensors]
    unexpected = [k for k in checkpoint.tensors if k not in expected]
    shapes = [
        f"{k} {tuple(checkpoint.tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in checkpoint.tensors and checkpoint.tensors[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"unexpected {len(unexpected)} tensors (first: {', '.join(unexpected[:3])})"
        )
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
    if problems:
        raise CheckpointError(
            f"{checkpoint.path} does not fit the spec's architecture: " + "; ".join(problems)
        )
    model.load_state_dict(checkpoint.tensors, strict=True)


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared storage; return the tensors and ``{dropped: kept}``."""
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name in sorted(state):
        tensor = state[name].detach().to("cpu")
        key = (
            tensor.untyped_storage().data_ptr(),
            int(tensor.storage_offset()),
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = (
            tensor.contiguous().clone() if _shares(tensor, tensors) else tensor.contiguous()
        )
    return tensors, aliases


def _shares(tensor: torch.Tensor, kept: Mapping[str, torch.Tensor]) -> bool:
    """True when ``tensor`` overlaps storage with an already kept tensor (partial views)."""
    ptr = tensor.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == ptr for t in kept.values() if t.numel())


def _decode_aliases(metadata: Mapping[str, str], path: Path) -> dict[str, str]:
    raw = metadata.get(KEY_ALIASES)
    if not raw:
        return {}
    try:
        aliases = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {KEY_ALIASES!r} is not valid JSON") from exc
    if not isinstance(aliases, dict):
        raise CheckpointError(f"{path}: metadata {KEY_ALIASES!r} is not an object")
    return {str(k): str(v) for k, v in aliases.items()}
