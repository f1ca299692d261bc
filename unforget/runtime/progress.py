"""Progress events: library code reports, only ``cli.py`` draws (on a terminal, on stderr)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tick:
    """``completed`` of ``total`` units of ``task`` are done; ``fields`` are live numbers."""

    task: str
    completed: int
    total: int
    fields: dict[str, float] = field(default_factory=dict)

    def numbers(self) -> str:
        """``"loss 0.1234  lr 0.001"``: the fields measured so far. A loop that reads its loss
        on the host only at checks reports NaN until its first check; a line saying
        ``loss nan`` would read as a diverged run, so a field that is not finite is left out."""
        return "  ".join(f"{k} {v:.4g}" for k, v in self.fields.items() if math.isfinite(v))


ProgressFn = Callable[[Tick], None]


def silent(_: Tick) -> None:
    """The default: report nothing."""


class PlainProgress:
    """Progress for a non-terminal stderr (a log file, CI): one plain line every ``interval``
    seconds, so a long run is visibly alive without filling the log with bar redraws.

    ``clock`` is injectable so tests can drive time instead of sleeping.
    """

    def __init__(
        self,
        write: Callable[[str], object],
        *,
        interval: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._write = write
        self._interval = interval
        self._clock = clock or time.monotonic
        self._start = self._clock()
        self._last = self._start

    def __call__(self, tick: Tick) -> None:
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        numbers = tick.numbers()
        self._write(
            f"unforget: {tick.task}: {tick.completed}/{tick.total}"
            f"{'  ' + numbers if numbers else ''} ({now - self._start:.0f} s elapsed)\n"
        )
