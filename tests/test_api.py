"""The public Python API (``unforget.apply`` / ``unforget.audit``), used as a notebook would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unforget
from unforget.config.spec import ModelSpec
from unforget.io.checkpoint import load_checkpoint, load_into
from unforget.models import build_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data" / "fashion-mnist"
TINY_SPEC = {
    "model": {"name": "mlp", "kwargs": {"hidden": [128]}},
    "data": {"path": str(SAMPLE_DATA)},
}


def _ids(path: Path, n: int) -> list[str]:
    lines = [s.strip() for s in path.read_text().splitlines()]
    return [s for s in lines if s and not s.startswith("#")][:n]


def test_import_is_cheap_and_lists_the_api() -> None:
    code = "import sys, unforget; print('torch' in sys.modules, sorted(unforget.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("False")
    assert "apply" in out.stdout and "audit" in out.stdout
    from unforget.methods import DEFAULT_METHOD, available

    assert DEFAULT_METHOD in available()


def test_apply_an_in_memory_module(tiny_ckpt: Path, sample_dir: Path) -> None:
    """An nn.Module in, an unlearned copy and a receipt out; the input module is untouched."""
    module = build_model(
        ModelSpec(name="mlp", kwargs={"hidden": [128]}), input_shape=(1, 28, 28), num_classes=10
    )
    load_into(module, load_checkpoint(tiny_ckpt))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ids = _ids(sample_dir / "forget_random10.txt", 60)

    result = unforget.apply(
        module, ids, spec=TINY_SPEC, method="finetune", options={"epochs": 1}, device="cpu"
    )

    assert result.receipt is not None and result.receipt.provenance.manifest_count == 60
    assert result.checkpoint is None  # written to a temporary folder, removed afterwards
    assert result.model is not module
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_apply_a_checkpoint_path_writes_beside_out(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "api.safetensors"
    ids = _ids(ROOT / "sample_data" / "forget_random10.txt", 40)
    result = unforget.apply(
        tiny_ckpt, ids, out=out, method="finetune", options={"epochs": 1}, device="cpu"
    )
    assert result.checkpoint == out and out.is_file()
    assert result.receipt_path is not None and result.receipt_path.is_file()
    again = unforget.apply(out, ids, out=tmp_path / "again.safetensors", device="cpu")
    assert again.receipt is None and again.already_applied  # nothing written the second time
    assert not (tmp_path / "again.safetensors").exists()


def test_api_names_survive_importing_the_package_internals() -> None:
    """Importing every subpackage must not replace ``unforget.apply``/``unforget.audit`` (a
    subpackage of the same name would: importing it sets the attribute on the package)."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(unforget.__path__, "unforget."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    assert callable(unforget.apply) and callable(unforget.audit)


def test_library_errors_are_typed(tiny_ckpt: Path) -> None:
    with pytest.raises(unforget.InputError):
        unforget.apply(tiny_ckpt, [], device="cpu")
    with pytest.raises(unforget.UnforgetError):
        unforget.apply(tiny_ckpt, ["no-such-id"], device="cpu")


@pytest.mark.slow
def test_readme_notebook_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example, executed verbatim from the repository root."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S)
    assert block is not None, "README lost its Python API example"
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    exec(compile(block.group(1).replace("out/", f"{tmp_path}/"), "README", "exec"), namespace)
    assert namespace["report"].verdict.status in {"PASS", "INCONCLUSIVE", "FAIL-LEAK"}
