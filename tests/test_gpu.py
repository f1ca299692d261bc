"""The GPU check (``scripts/gpu_check.sh``): train/apply/audit on CUDA with AMP give the same
verdicts as on CPU. Skipped without a CUDA device."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_script(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=3600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "same verdicts on CPU and CUDA" in done.stdout


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path: Path) -> None:
    """With CUDA hidden the script says it skipped and exits 0 without running anything."""
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and not list(tmp_path.iterdir())
