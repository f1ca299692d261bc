"""Shared fixtures. Tests run offline: HF hub access is off and HF_HOME is a temp folder."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

# One temp folder per test session holds the HF cache, unforget's cache and the ledger key, so
# they never touch the user's home; it is removed when the session ends (each session used to
# leave three folders behind, and a machine that runs the suite often filled its disk).
_SESSION = Path(tempfile.mkdtemp(prefix="unforget-tests-"))
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = os.environ.get("UNFORGET_TEST_HF_HOME", str(_SESSION / "hf"))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("UNFORGET_CACHE", str(_SESSION / "cache"))
os.environ["UNFORGET_CONFIG"] = str(_SESSION / "config")
os.environ.pop("UNFORGET_LEDGER_KEY_FILE", None)
# Child processes (the CLI, torchrun and its torchelastic_* folders) keep their temp files there.
(_SESSION / "tmp").mkdir()
os.environ["TMPDIR"] = str(_SESSION / "tmp")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script(name)`` imports ``scripts/<name>.py`` (the scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        return module

    return load


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
