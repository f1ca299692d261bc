"""How many references an audit can afford: ``--refs auto`` and the estimate printed first.

The cost of one reference is (seconds per training step) × (steps in the recipe). The step time
is measured on a few real steps *after* a warm-up run, so one-time costs (library imports, the
first optimiser construction, allocator warm-up) are not multiplied by thousands of steps, and
it is taken as min(CPU time, wall time) per step: on a loaded machine wall time counts other
people's work (issue 11 measured a 2.7× overestimate from a timed epoch), while with several
torch threads on idle cores CPU time counts each core. Neither is ever below the true cost on an
idle machine with the same thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from unforget.data.splits import Split
from unforget.runtime.device import Precision
from unforget.workflows.workspace import Workspace

CHOICES = (8, 4, 2)
# A PASS needs every reference audited against the others as a negative control: K ≥ 2.
MIN_REFS_FOR_PASS = 2


@dataclass(frozen=True)
class StepTiming:
    """Measured cost of training steps with the target's recipe (after warm-up)."""

    cpu_per_step: float  # seconds of process CPU time (all threads)
    wall_per_step: float  # seconds of wall time
    steps_timed: int
    steps_per_reference: int  # recipe epochs × batches per epoch

    @property
    def seconds_per_step(self) -> float:
        return min(self.cpu_per_step, self.wall_per_step)

    @property
    def seconds_per_reference(self) -> float:
        return self.seconds_per_step * self.steps_per_reference


def measure_steps(
    ws: Workspace,
    *,
    split: Split,
    rows: np.ndarray,
    precision: Precision,
    warmup: int = 5,
    steps: int = 30,
) -> StepTiming:
    """Train ``warmup`` untimed steps, then time ``steps`` steps on the first rows of ``rows``."""
    from unforget.training.loop import fit

    batch = ws.spec.recipe.batch_size
    spec = ws.spec.replace(recipe=replace(ws.spec.recipe, epochs=1))

    def run(n: int) -> int:
        subset = rows[: max(1, n) * batch]
        fit(
            spec,
            split=split,
            rows=subset,
            info=ws.info,
            precision=precision,
            seed=0,
            encoder=ws.encoder,
            allow_plugin=ws.allow_plugin,
        )
        return math.ceil(len(subset) / batch)

    run(warmup)
    cpu, wall = time.process_time(), time.perf_counter()
    timed = run(steps)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    per_epoch = math.ceil(len(rows) / batch)
    return StepTiming(
        cpu_per_step=cpu / timed,
        wall_per_step=wall / timed,
        steps_timed=timed,
        steps_per_reference=per_epoch * ws.spec.recipe.epochs,
    )


@dataclass(frozen=True)
class Plan:
    """How many references to use and what the missing ones cost (decided before training).

    ``k == 0`` with ``fits`` false: not even :data:`MIN_REFS_FOR_PASS` fit the budget, so the
    audit stops INCONCLUSIVE up front (``reason`` says what budget would do).
    """

    k: int
    cached: int
    jobs: int
    seconds_per_reference: float
    reason: str
    fits: bool = True

    @property
    def to_train(self) -> int:
        return self.k - self.cached

    @property
    def seconds(self) -> float:
        """Estimated wall time to train the missing references with ``jobs`` processes."""
        return math.ceil(self.to_train / max(self.jobs, 1)) * self.seconds_per_reference


def choose(
    requested: int | None,
    *,
    cached: Callable[[int], int],
    seconds_per_reference: Callable[[], float],
    budget_minutes: float,
    jobs: int,
) -> Plan:
    """``requested`` K, or (``None`` = auto) the largest K in {8, 4, 2} within the budget.

    Auto never goes below :data:`MIN_REFS_FOR_PASS`: fewer references cannot give a PASS, so
    spending the budget on them would only buy an INCONCLUSIVE. Cached references cost nothing;
    the step timing is only measured when something must be trained.
    """
    if requested is not None:
        per = seconds_per_reference() if cached(requested) < requested else 0.0
        return Plan(requested, cached(requested), jobs, per, "requested")
    if cached(CHOICES[0]) == CHOICES[0]:
        return Plan(CHOICES[0], CHOICES[0], jobs, 0.0, "all cached")
    per = seconds_per_reference()
    budget = budget_minutes * 60
    for k in (c for c in CHOICES if c >= MIN_REFS_FOR_PASS):
        plan = Plan(k, cached(k), jobs, per, f"fits the {budget_minutes:g}-minute budget")
        if plan.seconds <= budget:
            return plan
    need = Plan(MIN_REFS_FOR_PASS, cached(MIN_REFS_FOR_PASS), jobs, per, "")
    return Plan(
        0,
        0,
        jobs,
        per,
        f"the minimum for a PASS, {MIN_REFS_FOR_PASS} references, needs about "
        f"{duration(need.seconds)}, over the {budget_minutes:g}-minute --budget: "
        f"INCONCLUSIVE without training; pass --budget {math.ceil(need.seconds / 60 + 0.5)} "
        f"(or --refs {MIN_REFS_FOR_PASS}, or --jobs N) to run the audit",
        fits=False,
    )


def duration(seconds: float) -> str:
    """``42 s`` below two minutes, else ``3.1 min``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def describe(plan: Plan, timing: StepTiming | None) -> str:
    """The one-line estimate printed before any reference is trained."""
    if timing is None:
        return f"references: K={plan.k} ({plan.reason}); {plan.cached} cached, nothing to train"
    return (
        f"references: estimate {timing.seconds_per_step * 1e3:.2f} ms/step × "
        f"{timing.steps_per_reference} steps = {duration(timing.seconds_per_reference)} per "
        f"reference (CPU {timing.cpu_per_step * 1e3:.2f} / wall {timing.wall_per_step * 1e3:.2f} "
        f"ms/step over {timing.steps_timed} steps after warm-up); K={plan.k} ({plan.reason}); "
        f"{plan.cached} cached, {plan.to_train} to train with {plan.jobs} job(s): about "
        f"{duration(plan.seconds)}"
    )
