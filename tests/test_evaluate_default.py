"""The evidence script's PASS margin: how far the AUC interval stays inside the verdict's ±δ."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from unforget.mia.results import VerdictRule


def _row(model: str, seed: int, low: float, high: float, verdict: str) -> dict[str, object]:
    return {
        "setting": "random1",
        "model": model,
        "seed": seed,
        "forget_acc": 0.87,
        "retain_acc": 0.9,
        "test_acc": 0.88,
        "auc_diff": (low + high) / 2,
        "auc_diff_low": low,
        "auc_diff_high": high,
        "tpr1_excess": 0.0,
        "verdict": verdict,
        "time_ratio": 0.05,
    }


def test_the_margin_is_the_room_left_inside_the_verdicts_band(
    load_script: Callable[[str], ModuleType],
) -> None:
    ev = load_script("evaluate_default")
    delta = VerdictRule().delta_auc
    assert ev.margin(_row("m", 0, -0.02, 0.025, "PASS")) == pytest.approx(delta - 0.025)
    assert ev.margin(_row("m", 0, -0.035, 0.01, "INCONCLUSIVE")) == pytest.approx(delta - 0.035)
    assert ev.margin({"model": "original"}) is None  # a row the audit did not score
    rows = [
        _row("retrain", 0, -0.022, 0.022, "PASS"),
        _row("retrain", 1, -0.024, 0.026, "PASS"),
        _row("m", 0, -0.02, 0.025, "PASS"),
        _row("m", 1, -0.034, 0.016, "INCONCLUSIVE"),
    ]
    lines = ev.table(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    line = next(x for x in lines if x.startswith("| random1 | m |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[header.index("PASS margin")] == "0.0005 ± 0.0064"  # (0.005, −0.004)
