"""Shared fixtures. Tests run offline: HF hub access is off and HF_HOME is a temp folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="unforget-hf-")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = os.environ.get("UNFORGET_TEST_HF_HOME", _HF_HOME)
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# Caches and the ledger key live in temp folders, never in the user's home.
os.environ.setdefault("UNFORGET_CACHE", tempfile.mkdtemp(prefix="unforget-cache-"))
os.environ["UNFORGET_CONFIG"] = tempfile.mkdtemp(prefix="unforget-config-")
os.environ.pop("UNFORGET_LEDGER_KEY_FILE", None)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The shipped sample data (read-only: never write into it)."""
    return SAMPLE


@pytest.fixture(scope="session")
def sample_ckpt() -> Path:
    """The shipped sample checkpoint (an MLP that memorised its 6,000 training images)."""
    return SAMPLE / "model.safetensors"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained for a few epochs on the sample data (fast to retrain in tests)."""
    from unforget.config.spec import merge_spec
    from unforget.runtime.device import precision_for, resolve_device
    from unforget.workflows.train import train_checkpoint

    out = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    spec = merge_spec(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [128]}},
            "data": {"path": str(SAMPLE / "fashion-mnist")},
            "recipe": {"epochs": 8, "batch_size": 128, "lr": 0.003, "seed": 0},
        }
    )
    train_checkpoint(spec, out=out, precision=precision_for(resolve_device("cpu")))
    return out
