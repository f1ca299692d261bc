"""The one interface every unlearning method implements, and what it is handed.

A method is one file: a frozen, keyword-only ``Config`` dataclass (its options, validated in
``__post_init__``) and a class with ``info`` and ``run(task, config) -> Outcome``. Shared pieces
(pairing forget with retain batches, guard rails, quick evaluation) are plain functions in
:mod:`unforget.methods.loop`, not a base class (STYLE §1-2).

A method that keeps state in a file beside the checkpoint (PGU's layer statistics) says so with
a ``state`` attribute implementing :class:`SavedState`; the commands handle every such file
through that hook (protect it as an input, write it at training time, carry it to the output of
a deletion, never leave a stale one), so no command code names a method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch import nn

from unforget.config.spec import RunSpec
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent

if TYPE_CHECKING:
    from unforget.training.evaluate import Outputs

Need = Literal["forget", "retain", "reference", "statistics", "retrain"]
Loader = torch.utils.data.DataLoader


@dataclass(frozen=True)
class MethodInfo:
    """How ``unforget methods`` describes a method."""

    name: str
    summary: str  # one line
    needs: tuple[Need, ...]  # data the method reads
    paper: str  # citation


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """Guard rails shared by all gradient methods.

    The run is stopped, the last good weights restored and a :class:`GuardRailError` raised
    when a loss is non-finite or accuracy on a fixed retain sample falls more than
    ``max_retain_drop`` below where it started (checked every ``check_every`` steps).
    """

    max_retain_drop: float = 0.15  # absolute accuracy, 0.15 = 15 points
    check_every: int = 25  # steps


@dataclass(frozen=True, kw_only=True)
class UnlearnTask:
    """Everything a method may use. Loaders yield ``(x, y, rows)`` batches on the host.

    ``forget``/``retain`` shuffle with the run's seed; ``reference`` (held-out rows methods may
    read, recorded in the receipt) and ``retain_eval`` (a fixed retain sample) do not shuffle.
    ``retrain`` trains a fresh model from the checkpoint's recipe on the retain set (the exact
    baseline). ``saved_state`` is the method's state file beside the checkpoint
    (:class:`SavedState`), when the method has one and the checkpoint carries it.
    ``removed_classes`` lists classes removed whole (a model retrained without them never
    predicts them), which methods may use as a stronger target than held-out behaviour.
    ``before`` holds the input model's outputs that the caller already measured (the receipt's
    before-snapshot): ``"forget"`` over ``forget_eval`` and ``"retain"`` over ``retain_eval``,
    so a method that needs them does not run the same forward pass again; empty when nobody
    measured them. Never the audit's evidence rows.
    """

    model: nn.Module
    forget: Loader
    retain: Loader
    reference: Loader | None
    retain_eval: Loader
    forget_eval: Loader
    precision: Precision
    spec: RunSpec
    seed: int
    n_forget: int
    n_retain: int
    guard: GuardConfig = field(default_factory=GuardConfig)
    removed_classes: tuple[int, ...] = ()  # classes whose every remaining train row is forgotten
    retrain: Callable[[], nn.Module] | None = None
    saved_state: Path | None = None
    checkpoint_sha256: str = ""  # of the checkpoint being unlearned: a saved state names it
    on_progress: ProgressFn = silent
    before: dict[str, Outputs] = field(default_factory=dict)

    @property
    def forget_fraction(self) -> float:
        """p_F = |F| / (|F| + |R|)."""
        return self.n_forget / max(self.n_forget + self.n_retain, 1)


@dataclass(frozen=True)
class Outcome:
    """What a method did. ``details`` is recorded verbatim in the receipt (JSON-ready)."""

    model: nn.Module
    steps: int
    stop_reason: str
    details: dict[str, Any] = field(default_factory=dict)
    weights_changed: bool = True


class Method(Protocol):
    """An unlearning method: ``run`` returns the unlearned model (it may modify task.model)."""

    info: ClassVar[MethodInfo]
    Config: ClassVar[type]

    def run(self, task: UnlearnTask, config: Any) -> Outcome: ...


@dataclass(frozen=True)
class Trained:
    """What ``unforget train`` hands :meth:`SavedState.measure`: the model just trained, every
    training row it saw (``loader``, unshuffled; ``rows``, positions in the training split) and
    ``refit(rows, seed, epochs)``, which trains a fresh model by the same recipe on other rows
    (a state may need models of its own, e.g. proxy-distill's unseen-data proxies)."""

    model: nn.Module
    loader: Loader
    rows: np.ndarray
    precision: Precision
    spec: RunSpec
    refit: Callable[[np.ndarray, int, int], nn.Module]


class SavedState(Protocol):
    """State a method keeps in a safetensors file beside a checkpoint, and how it lives on.

    Why a hook: such state is measured once over the training data (cheap at training time,
    expensive at deletion time) and must follow the checkpoint through consecutive deletions,
    updated for what each one removed, or be dropped. ``label`` names the file in messages
    ("the PGU statistics"). ``path`` is where it sits beside a checkpoint. ``measure`` computes
    it for a freshly trained model (:class:`Trained`) at ``unforget train``.
    ``carry`` is called by ``apply`` BEFORE the method runs (with the weights as they were) and
    returns the state for the checkpoint the deletion will produce, or None when there is none
    to carry (no usable file: the output then has no state file). ``to_bytes`` serialises a
    state, tied to the checkpoint it describes by that checkpoint's SHA-256.
    """

    label: str

    def path(self, checkpoint: Path) -> Path: ...

    def measure(self, trained: Trained) -> Any: ...

    def carry(self, task: UnlearnTask) -> Any | None: ...

    def to_bytes(self, state: Any, *, checkpoint_sha256: str) -> bytes: ...


def saved_state(method: Method) -> SavedState | None:
    """The method's :class:`SavedState` hook, or None for the methods that keep no file."""
    return getattr(method, "state", None)
