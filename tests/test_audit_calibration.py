"""Calibration of the verdict on known cases, and the shipped 20% manifest it is documented on.

The slow test is a reduced run of ``scripts/calibrate_audit.py`` (audit.md, "Calibrate, don't
assume"): exact retrains of a small MLP must not FAIL and must mostly PASS at the documented
minimum |F| with the default K = 4, and models that trained on F must come out FAIL-LEAK.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from unforget.io.manifest import read_manifest
from unforget.mia.results import VerdictRule


def test_shipped_random20_manifest_is_valid_and_reproducible(
    sample_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    load_script: Callable[[str], ModuleType],
) -> None:
    """1,200 distinct training IDs (20% of 6,000), byte-identical to the seeded script's output."""
    shipped = sample_dir / "forget_random20.txt"
    manifest = read_manifest(shipped)
    assert len(manifest.ids) == 1200 and manifest.duplicates == 0
    assert all(i.startswith("fmnist-train-") for i in manifest.ids)
    out = tmp_path / "again.txt"
    monkeypatch.setattr(sys, "argv", ["build_forget_manifest.py", "--out", str(out)])
    load_script("build_forget_manifest").main()
    assert out.read_bytes() == shipped.read_bytes()


@pytest.mark.slow
def test_calibration_retrains_pass_and_originals_fail_leak(
    sample_dir: Path, load_script: Callable[[str], ModuleType]
) -> None:
    """6 exact retrains (each audited against 4 of the others) and 3 originals on a small MLP."""
    cal = load_script("calibrate_audit")
    data = cal.load_data(sample_dir / "forget_random20.txt", seed=0)
    retrains, originals, _ = cal.build_models(data, retrains=6, originals=3, recipe=cal.Recipe())
    counts = cal.audit_counts(
        retrains,
        originals,
        n_forget=1200,
        n_total_forget=len(data.forget),
        k=4,
        rule=VerdictRule(),
        n_boot=200,
        seed=0,
    )
    retrain, original = counts["retrain"], counts["original"]
    assert retrain["FAIL-LEAK"] == 0 and retrain["FAIL-OVER"] == 0, retrain
    assert retrain["PASS"] >= 4, retrain
    assert original["FAIL-LEAK"] == 3, original
    small = cal.audit_counts(
        retrains,
        originals,
        n_forget=20,
        n_total_forget=len(data.forget),
        k=4,
        rule=VerdictRule(),
        n_boot=200,
        seed=0,
    )
    assert small["retrain"]["PASS"] == 0 and small["retrain"]["FAIL-LEAK"] == 0, small
