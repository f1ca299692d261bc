"""proxy-distill's saved state: cross-fitted unseen-data proxies written at training time.

A training row's fold is a fixed hash of its position; proxy k trains on fold k only, so for a
row of fold k the other proxy's prediction is an unseen-data prediction. ``apply`` uses the
file only when it names the checkpoint being unlearned, never carries it to its output (the
proxies saw the deleted rows), and otherwise trains its proxy at apply time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unforget import cli
from unforget.config.spec import merge_spec
from unforget.errors import OutputExistsError
from unforget.io.checkpoint import load_checkpoint
from unforget.methods.base import UnlearnTask
from unforget.methods.proxy_state import FOLDS, fold_of, load_proxies, proxy_path
from unforget.runtime.device import precision_for, resolve_device
from unforget.training.evaluate import predict
from unforget.workflows.train import add_states, train_checkpoint
from unforget.workflows.unlearn import ApplyRequest, apply
from unforget.workflows.workspace import open_workspace

CPU = precision_for(resolve_device("cpu"))
SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def test_fold_of_is_fixed_balanced_and_salted() -> None:
    rows = np.arange(20_000)
    folds = fold_of(rows, 0)
    assert set(np.unique(folds)) == set(range(FOLDS))
    assert abs(folds.mean() - 0.5) < 0.02
    assert np.array_equal(folds, fold_of(rows, 0))  # a position's fold never changes
    assert np.array_equal(folds[7:9], fold_of(np.array([7, 8]), 0))  # nor depends on the others
    assert (folds != fold_of(rows, 1)).mean() > 0.3  # another salt, another split


@pytest.fixture(scope="module")
def with_proxies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A small MLP trained with ``states=("proxy-distill",)`` (``train --proxies``)."""
    out = tmp_path_factory.mktemp("proxies") / "m.safetensors"
    spec = merge_spec(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [64]}},
            "data": {"path": str(SAMPLE / "fashion-mnist")},
            "recipe": {"epochs": 4, "batch_size": 128, "lr": 0.003, "seed": 0},
        }
    )
    report = train_checkpoint(spec, out=out, precision=CPU, states=("proxy-distill",))
    return out, report


def test_train_writes_two_cross_fitted_proxies_tied_to_the_checkpoint(
    with_proxies: tuple[Path, object],
) -> None:
    out, report = with_proxies
    path = proxy_path(out)
    assert report.states == {"proxy-distill": path}  # type: ignore[attr-defined]
    checkpoint = load_checkpoint(path)
    assert checkpoint.metadata["unforget.checkpoint_sha256"] == report.sha256  # type: ignore[attr-defined]
    info = checkpoint.meta_json("unforget.proxies")
    assert info["folds"] == 2 and info["epochs"] == 4 and info["recipe_epochs"] == 4  # full length
    assert sum(info["rows"]) == 6000 and min(info["rows"]) > 2800
    # each proxy is a competent model on the fold it never saw (chance is 0.1)
    assert all(a > 0.7 for a in info["unseen_fold_accuracy"])


def _task(ckpt: Path) -> tuple[UnlearnTask, object]:
    ws = open_workspace(ckpt)
    model = ws.load_model(None, CPU)
    loader = ws.loader(ws.train, np.arange(200), device=CPU.device)
    task = UnlearnTask(
        model=model,
        forget=loader,
        retain=loader,
        reference=None,
        retain_eval=loader,
        forget_eval=loader,
        precision=CPU,
        spec=ws.spec,
        seed=0,
        n_forget=200,
        n_retain=5800,
        saved_state=proxy_path(ckpt),
        checkpoint_sha256=ws.checkpoint.sha256,
    )
    return task, loader


def test_each_row_is_predicted_by_the_proxy_that_never_saw_it(
    with_proxies: tuple[Path, object],
) -> None:
    out, _ = with_proxies
    task, loader = _task(out)
    proxies = load_proxies(task, task.model)
    mixed = proxies.predict(loader, CPU)  # type: ignore[arg-type]
    alone = [predict(m, loader, precision=CPU).logits for m in proxies.models]
    other = 1 - fold_of(mixed.rows, proxies.salt)
    assert 0 < other.sum() < len(other)
    for k in range(FOLDS):
        np.testing.assert_allclose(mixed.logits[other == k], alone[k][other == k], rtol=1e-6)


def test_apply_uses_the_proxies_and_never_carries_them(
    with_proxies: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = with_proxies

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a proxy was trained at apply time although the file fits")

    monkeypatch.setattr("unforget.methods.proxy_distill.train_proxy", no_training)
    unlearned = tmp_path / "u.safetensors"
    receipt = apply(
        ApplyRequest(ckpt=out, manifest=SAMPLE / "forget_random10.txt", out=unlearned),
        precision=CPU,
    ).receipt
    assert receipt is not None and receipt.provenance.method == "proxy-distill"
    proxy = receipt.method_details["proxy"]
    assert proxy["source"] == f"cross-fitted proxies from {proxy_path(out).name}"
    assert proxy["folds"] == 2 and proxy["train_seconds"] > 0
    assert receipt.method_details["sampling"] == "priority"  # the default's forget draws
    # this small model barely memorised (forget 0.79 vs held-out 0.81): the contract is the
    # default's, forget accuracy at held-out level afterwards
    assert abs(receipt.after.forget.accuracy - receipt.after.heldout.accuracy) <= 0.03
    # the proxies saw the deleted rows: none beside the output, the input's left as it was
    assert not proxy_path(unlearned).exists() and proxy_path(out).is_file()


def test_another_checkpoints_proxies_are_not_used(
    with_proxies: tuple[Path, object], tiny_ckpt: Path, tmp_path: Path
) -> None:
    out, _ = with_proxies
    ckpt = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_ckpt, ckpt)
    shutil.copy(proxy_path(out), proxy_path(ckpt))  # beside weights it was not written for
    receipt = apply(
        ApplyRequest(
            ckpt=ckpt,
            manifest=SAMPLE / "forget_random10.txt",
            out=tmp_path / "u.safetensors",
            options={"proxy_epochs": "0.5"},
        ),
        precision=CPU,
    ).receipt
    assert receipt is not None
    proxy = receipt.method_details["proxy"]
    assert proxy["source"] == "trained at apply time on the retain set"
    assert "written for another checkpoint" in proxy["note"] and proxy["steps"] > 0


def test_add_states_writes_proxies_for_an_existing_checkpoint(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_ckpt, ckpt)
    code = cli.run(["prepare", "--ckpt", str(ckpt), "--proxies", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["proxies"] == str(proxy_path(ckpt))
    sha = load_checkpoint(ckpt).sha256
    assert load_checkpoint(proxy_path(ckpt)).metadata["unforget.checkpoint_sha256"] == sha
    with pytest.raises(OutputExistsError):
        add_states(ckpt, ("proxy-distill",), precision=CPU)
    assert cli.run(["prepare", "--ckpt", str(ckpt), "--proxies"]) == 2
    assert "exists" in capsys.readouterr().err
    torch.manual_seed(0)  # the state of the global generator is not this test's concern
