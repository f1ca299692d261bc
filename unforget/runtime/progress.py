"""Progress events: library code reports, only ``cli.py`` draws (on a terminal, on stderr)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tick:
    """``completed`` of ``total`` units of ``task`` are done; ``fields`` are live numbers."""

    task: str
    completed: int
    total: int
    fields: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Tick], None]


def silent(_: Tick) -> None:
    """The default: report nothing."""
