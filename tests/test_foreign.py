"""Checkpoints trained outside unforget: a plain ``state_dict`` saved with safetensors plus
``--config`` (the README's "bring your own model" route) must work with every method.

The model here is a 10-class MLP trained with a hand-written torch loop, so its checkpoint
carries no unforget metadata at all: no spec, no class count, no fingerprint. Before the
class count was taken from the data, ∇τ sized its class mask with a 2-class default and
crashed with an IndexError on the first label >= 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unforget import cli
from unforget.config.spec import ModelSpec
from unforget.io.checkpoint import KEY_SPEC, load_checkpoint
from unforget.methods import METHODS
from unforget.models import build_model

CLASSES, FEATURES, HIDDEN = 10, 12, [32]


def _split(rng: np.random.Generator, centres: np.ndarray, n: int, prefix: str) -> object:
    import datasets

    labels = np.arange(n) % CLASSES  # every class present in every split
    x = centres[labels] + rng.normal(scale=1.5, size=(n, FEATURES))
    return datasets.Dataset.from_dict(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "features": x.astype(np.float32).tolist(),
            "label": labels.tolist(),
        }
    )


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data, a model trained elsewhere (plain torch), its bare checkpoint, a config, a manifest."""
    root = tmp_path_factory.mktemp("foreign")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(CLASSES, FEATURES))
    train, heldout = _split(rng, centres, 200, "t"), _split(rng, centres, 120, "h")
    (root / "data").mkdir()
    train.to_parquet(str(root / "data" / "train.parquet"))  # type: ignore[attr-defined]
    heldout.to_parquet(str(root / "data" / "heldout.parquet"))  # type: ignore[attr-defined]

    torch.manual_seed(0)
    model = build_model(
        ModelSpec(name="mlp", kwargs={"hidden": HIDDEN}),
        input_shape=(FEATURES,),
        num_classes=CLASSES,
    )
    x = torch.tensor(list(train["features"]))  # type: ignore[index]
    y = torch.tensor(list(train["label"]))  # type: ignore[index]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # full batch: memorises the 200 rows
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    save_file(model.state_dict(), str(root / "model.safetensors"))  # no metadata at all

    (root / "unforget.toml").write_text(
        '[model]\nname = "mlp"\nkwargs = { hidden = [32] }\n'
        '[data]\npath = "data"\ninput_columns = ["features"]\n'
        "[recipe]\nepochs = 2\nbatch_size = 32\nlr = 0.01\n",
        encoding="utf-8",
    )
    (root / "ids.txt").write_text("\n".join(f"t{i}" for i in range(0, 200, 10)) + "\n")
    return {
        "ckpt": root / "model.safetensors",
        "config": root / "unforget.toml",
        "manifest": root / "ids.txt",
        "root": root,
    }


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli.run(argv)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {"stderr": captured.err})


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_unlearns_a_foreign_checkpoint(
    method: str, foreign: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``apply --ckpt bare.safetensors --config unforget.toml --method M`` writes a checkpoint
    of the same 10-class architecture, its spec now recording the class count read from the
    data, and a receipt whose before/after forget metrics cover the manifest's 20 rows."""
    out = foreign["root"] / f"out-{method}.safetensors"
    argv = ["apply", "--ckpt", str(foreign["ckpt"]), "--config", str(foreign["config"])]
    argv += ["--forget", str(foreign["manifest"]), "--method", method, "--out", str(out)]
    code, receipt = _run([*argv, "--device", "cpu", "--json", "--force"], capsys)
    assert code == 0, receipt
    written = load_checkpoint(out)
    spec = json.loads(written.metadata[KEY_SPEC])
    assert spec["num_classes"] == CLASSES
    assert spec["input_shape"] == [FEATURES]
    model = build_model(
        ModelSpec(name="mlp", kwargs={"hidden": HIDDEN}),
        input_shape=(FEATURES,),
        num_classes=CLASSES,
    )
    model.load_state_dict(written.tensors, strict=True)
    assert all(torch.isfinite(t).all() for t in written.tensors.values())
    assert receipt["method"] == method
    assert receipt["manifest_count"] == 20
    assert receipt["metrics"]["before"]["forget"]["n"] == 20
    assert receipt["already_applied"] is False
    assert receipt["assessment"]["state"] in {"like_unseen", "remembered", "over_forgotten"}


def test_audit_reads_a_foreign_checkpoint(
    foreign: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit takes the same route; with no references it must say INCONCLUSIVE (exit 5),
    not crash on the missing metadata."""
    argv = ["audit", "--ckpt", str(foreign["ckpt"]), "--config", str(foreign["config"])]
    argv += ["--forget", str(foreign["manifest"]), "--refs", "0", "--device", "cpu", "--json"]
    code, report = _run(argv, capsys)
    assert code == 5, report
    assert report["verdict"]["status"] == "INCONCLUSIVE"
    assert "--refs" in report["conclusion"]["next_step"]


def test_flags_alone_describe_a_foreign_checkpoint(
    foreign: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No config file: ``--model``, ``--data`` and section keys of ``--set`` give the spec;
    a bare ``--set`` key stays a method option."""
    out = foreign["root"] / "flags.safetensors"
    argv = ["apply", "--ckpt", str(foreign["ckpt"]), "--forget", str(foreign["manifest"])]
    argv += ["--model", "mlp", "--set", 'model.kwargs={"hidden": [32]}']
    argv += ["--data", str(foreign["root"] / "data"), "--set", "data.input_columns=features"]
    argv += ["--set", "recipe.batch_size=32", "--set", "lr=0.002", "--out", str(out)]
    code, receipt = _run([*argv, "--device", "cpu", "--json"], capsys)
    assert code == 0, receipt
    assert receipt["options"]["lr"] == 0.002
    spec = json.loads(load_checkpoint(out).metadata[KEY_SPEC])
    assert spec["recipe"]["batch_size"] == 32
    assert spec["data"]["input_columns"] == ["features"]
