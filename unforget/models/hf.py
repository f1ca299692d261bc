"""Pretrained HuggingFace sequence classifiers from a local model directory (extra:
``pip install 'unforget[transformers]'``).

Use as a plugin model::

    unforget train --model unforget.models.hf:sequence_classifier \\
        --set 'model.kwargs={"path": "/models/all-MiniLM-L6-v2"}' ...

The directory is what ``save_pretrained`` writes: ``config.json``, ``tokenizer.json`` and
``model.safetensors``. Nothing is ever fetched from the hub (``local_files_only``), and weights
load from safetensors only (a ``pytorch_model.bin`` is a pickle and is refused). The classifier
head is new (``num_labels`` = the data's classes) and is initialised from the run's seed.

``unforget train`` tokenises with the directory's own ``tokenizer.json`` (see
:func:`unforget.data.text.training_encoder`); the encoder pads with that tokenizer's pad id, and
:class:`SequenceClassifier` masks exactly the positions holding it, via
:func:`unforget.data.text.pad_id` on the same file, so the two cannot disagree.
:mod:`unforget.workflows.export_hf` writes an unlearned checkpoint back out as such a directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unforget.errors import SpecError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

INSTALL_HINT = "install the extra: pip install 'unforget[transformers]'"
PREFIX = "model."  # state-dict prefix of the wrapped HF model inside SequenceClassifier


class SequenceClassifier(nn.Module):
    """Token ids ``(B, L)`` padded with ``pad_id`` -> logits ``(B, num_classes)``.

    The attention mask is ``ids != pad_id``. A row of padding only (an empty text) attends to
    its first position instead, so it gets a finite prediction rather than NaN.
    """

    def __init__(self, model: PreTrainedModel, *, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        mask = ids.ne(self.pad_id)
        mask[:, 0] |= ~mask.any(dim=1)
        logits: torch.Tensor = self.model(input_ids=ids, attention_mask=mask.long()).logits
        return logits


def sequence_classifier(
    *, input_shape: tuple[int, ...], num_classes: int, path: str, pretrained: bool = True
) -> SequenceClassifier:
    """Build ``AutoModelForSequenceClassification`` from the local directory ``path``.

    Args:
        input_shape: ``(max_length,)``; must fit the model's position embeddings.
        num_classes: number of output logits (the classifier head is created for it).
        path: local model directory (config.json, tokenizer.json, model.safetensors).
        pretrained: load the directory's weights. Off gives the architecture with random
            weights, which is enough when a checkpoint's tensors are loaded over it anyway.

    Raises:
        SpecError: transformers missing, incomplete directory, or a too long ``max_length``.
    """
    directory = model_directory(path, need_weights=pretrained)
    config = load_config(directory, num_classes=num_classes)
    limit = getattr(config, "max_position_embeddings", None)
    if len(input_shape) != 1 or (limit is not None and input_shape[0] > limit):
        raise SpecError(
            f"{directory}: data.max_length {input_shape} must be one length of at "
            f"most {limit} tokens (the model's position embeddings)"
        )
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        if pretrained:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(directory),
                config=config,
                local_files_only=True,
                use_safetensors=True,
                ignore_mismatched_sizes=True,
            )
        else:
            model = AutoModelForSequenceClassification.from_config(config)
    return SequenceClassifier(model.float(), pad_id=int(config.pad_token_id))


def model_directory(path: str | Path, *, need_weights: bool) -> Path:
    """Check that ``path`` is a usable local model directory and return it.

    Raises:
        SpecError: listing every missing file, with what to do.
    """
    directory = Path(path).expanduser().resolve()
    needed = ["config.json", "tokenizer.json"] + (["model.safetensors"] if need_weights else [])
    missing = [name for name in needed if not (directory / name).is_file()]
    if not directory.is_dir():
        raise SpecError(f"model directory {directory} does not exist (model.kwargs.path)")
    if missing:
        pickle_hint = (
            "; a pytorch_model.bin is never loaded (pickle), convert it to "
            "safetensors with save_pretrained(safe_serialization=True)"
            if (directory / "pytorch_model.bin").is_file()
            else ""
        )
        raise SpecError(f"model directory {directory} lacks {', '.join(missing)}{pickle_hint}")
    return directory


def load_config(directory: Path, *, num_classes: int) -> PretrainedConfig:
    """The directory's config with ``num_labels`` set and the tokenizer's pad id recorded.

    A config without ``pad_token_id`` (GPT-style models) gets the tokenizer's, which those
    architectures need to find the last real token of a padded row.

    Raises:
        SpecError: transformers missing, no pad token, or config and tokenizer disagree on it.
    """
    try:
        from transformers import AutoConfig
    except ImportError as exc:
        raise SpecError(
            f"the plugin model unforget.models.hf needs transformers; {INSTALL_HINT}"
        ) from exc
    from tokenizers import Tokenizer

    from unforget.data.text import pad_id

    pad = pad_id(Tokenizer.from_file(str(directory / "tokenizer.json")))
    if pad is None:
        raise SpecError(
            f"{directory / 'tokenizer.json'} defines no pad token, so padding "
            "cannot be masked; add one (e.g. [PAD]) and save the tokenizer again"
        )
    with quiet_transformers():
        config = AutoConfig.from_pretrained(
            str(directory), local_files_only=True, num_labels=num_classes
        )
    if config.pad_token_id is not None and int(config.pad_token_id) != pad:
        raise SpecError(
            f"{directory}: config.json pad_token_id {config.pad_token_id} differs "
            f"from tokenizer.json's pad id {pad}; fix one of them"
        )
    config.pad_token_id = pad
    return config


def strip_prefix(tensors: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint tensors of a :class:`SequenceClassifier` renamed to the HF model's own keys."""
    return {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars (library code never prints), then
    restore the caller's settings."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
