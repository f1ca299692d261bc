"""The one training loop (``train.fit``): deterministic on CPU, learns for real, and the sample
model memorises its training set enough for membership to leak (what unlearning must undo)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unforget.config.spec import Recipe, RunSpec, merge_spec
from unforget.data.loaders import make_loader, source
from unforget.data.splits import fingerprint, input_info, load_split
from unforget.errors import GuardRailError, OutputExistsError
from unforget.io.checkpoint import KEY_LEDGER, KEY_PROVENANCE, KEY_SPEC, load_checkpoint, load_into
from unforget.io.ledger import covered, entries_from_json
from unforget.io.manifest import read_manifest
from unforget.models import build_model
from unforget.runtime.device import precision_for, resolve_device
from unforget.training.evaluate import predict, score
from unforget.training.loop import augment, fit, lr_factor, train_loop
from unforget.workflows.train import train_checkpoint
from unforget.workflows.workspace import open_workspace

CPU = precision_for(resolve_device("cpu"))


def small_spec(sample_dir: Path, **recipe: object) -> RunSpec:
    return merge_spec(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "data": {"path": str(sample_dir / "fashion-mnist")},
            "recipe": {"epochs": 1, "batch_size": 64, "augmentation": ["hflip", "crop"], **recipe},
        }
    )


def test_same_spec_and_seed_give_bit_identical_weights(sample_dir: Path) -> None:
    """Seed drives init, shuffling and augmentation: two runs agree bit for bit; another seed
    gives other weights."""
    spec = small_spec(sample_dir)
    split = load_split(spec.data, "train")
    info = input_info(split, spec.data)
    rows = np.arange(0, 6000, 4)

    def weights(seed: int) -> dict[str, torch.Tensor]:
        model, result = fit(spec, split=split, rows=rows, info=info, precision=CPU, seed=seed)
        assert result.steps == math.ceil(len(rows) / 64) and result.samples == len(rows)
        return {k: v.clone() for k, v in model.state_dict().items()}

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)


def test_the_sample_model_learned_and_memorised(sample_ckpt: Path) -> None:
    """Held-out accuracy > 80% (it learned) and train accuracy more than 8 points above it
    (it memorised: the membership signal unlearning has to remove)."""
    ws = open_workspace(sample_ckpt)
    model = build_model(ws.spec.model, input_shape=ws.info.shape, num_classes=ws.info.num_classes)
    load_into(model, ws.checkpoint)

    def accuracy(split: object, rows: np.ndarray) -> float:
        src = source(split, rows, spec=ws.spec.data, info=ws.info)
        loader = make_loader(src, batch_size=1000, shuffle=False, seed=0, device=CPU.device)
        return score(predict(model, loader, precision=CPU)).accuracy

    train_acc = accuracy(ws.train, np.arange(len(ws.train)))
    heldout_acc = accuracy(ws.heldout, ws.evidence_rows())
    assert heldout_acc > 0.80
    assert train_acc > heldout_acc + 0.08
    provenance = ws.checkpoint.meta_json(KEY_PROVENANCE)
    assert provenance["heldout_accuracy"] == pytest.approx(heldout_acc, abs=1e-6)
    assert provenance["train_accuracy"] == pytest.approx(train_acc, abs=1e-6)


def test_train_checkpoint_embeds_the_spec_and_facts(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    report = train_checkpoint(small_spec(sample_dir, augmentation=[]), out=out, precision=CPU)
    ckpt = load_checkpoint(out)
    spec = ckpt.meta_json(KEY_SPEC)
    train = load_split(report.spec.data, "train")
    assert spec["num_classes"] == 10 and spec["input_shape"] == [1, 28, 28]
    assert spec["train_fingerprint"] == fingerprint(train, report.spec.data)
    assert spec["model"]["kwargs"] == {"hidden": [32]}
    assert not Path(spec["data"]["path"]).is_absolute()  # relative to the checkpoint's folder
    assert report.sha256 == ckpt.sha256 and report.train.n == 6000
    assert report.heldout.n == len(open_workspace(out).evidence_rows())
    assert report.heldout.accuracy > 0.6  # one epoch of a 32-unit MLP already learns
    assert ckpt.meta_json(KEY_PROVENANCE)["command"] == "train"
    assert KEY_LEDGER not in ckpt.metadata


def test_train_refuses_an_existing_output_before_training(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started although the output exists")

    monkeypatch.setattr("unforget.workflows.train.fit", no_training)
    with pytest.raises(OutputExistsError):
        train_checkpoint(small_spec(sample_dir), out=out, precision=CPU)
    assert out.read_bytes() == b"precious"


def test_exact_retraining_leaves_out_the_manifest_and_records_it(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train --exclude ids.txt`` never sees those rows and writes them into the ledger."""
    import unforget.workflows.train as training_run

    manifest_path = tmp_path / "ids.txt"
    ids = read_manifest(sample_dir / "forget_random10.txt").ids[:50]
    manifest_path.write_text("\n".join(ids) + "\n")
    seen: dict[str, np.ndarray] = {}
    real_fit = training_run.fit

    def spy(*args: object, **kwargs: object) -> object:
        seen["rows"] = kwargs["rows"]  # type: ignore[assignment]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training_run, "fit", spy)
    out = tmp_path / "retrained.safetensors"
    spec = small_spec(sample_dir, augmentation=[])
    report = train_checkpoint(spec, out=out, precision=CPU, exclude=read_manifest(manifest_path))
    train = load_split(report.spec.data, "train")
    trained_ids = {train.ids[r] for r in seen["rows"]}
    assert len(seen["rows"]) == 6000 - 50 and not trained_ids & set(ids)
    assert report.train.n == 5950
    (entry,) = entries_from_json(load_checkpoint(out).meta_json(KEY_LEDGER))
    assert entry.count == 50 and entry.method == "retrain"
    assert all(covered([entry], list(ids))) and not any(covered([entry], list(train.ids[:3])))


def test_nonfinite_loss_stops_training() -> None:
    """A diverged model raises GuardRailError rather than writing NaN weights."""
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    batches = [(torch.rand(8, 4), torch.randint(0, 3, (8,)), torch.arange(8))] * 3
    with pytest.raises(GuardRailError, match="loss became nan at step 3"):
        train_loop(model, batches, recipe=Recipe(epochs=1), precision=CPU, seed=0)


def test_lr_schedules() -> None:
    """cosine: ½(1 + cos(π·t/T)): 1 at start, ½ at half time, 0 at the end; linear: 1 − t/T."""
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("linear", 25, 100) == pytest.approx(0.75)
    assert lr_factor("constant", 99, 100) == 1.0
    assert lr_factor("linear", 150, 100) == 0.0  # clamped past the end


@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (16, 3, 32, 32)])
def test_augmentation_keeps_shape_and_content(shape: tuple[int, ...]) -> None:
    """hflip: each image is itself or its mirror; crop: each image is a window of the image padded
    by side/8 (reflect), i.e. a translation by at most side/8 pixels."""
    x = torch.rand(shape)
    flipped = augment(x, ("hflip",), torch.Generator().manual_seed(0))
    assert flipped.shape == x.shape
    mirrored = [bool(torch.equal(flipped[i], x[i].flip(-1))) for i in range(len(x))]
    same = [bool(torch.equal(flipped[i], x[i])) for i in range(len(x))]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert any(mirrored) and any(same)

    cropped = augment(x, ("crop",), torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape
    h, w = shape[-2:]
    pad = h // 8
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    for i in range(len(x)):
        windows = [
            torch.equal(cropped[i], padded[i, :, oy : oy + h, ox : ox + w])
            for oy in range(2 * pad + 1)
            for ox in range(2 * pad + 1)
        ]
        assert any(windows)
    assert not torch.equal(cropped, x)


def test_augmentation_leaves_non_images_alone() -> None:
    x = torch.rand(8, 5)
    assert augment(x, ("hflip", "crop"), torch.Generator()) is x
    images = torch.rand(2, 1, 8, 8)
    assert augment(images, (), torch.Generator()) is images
