"""``torchrun`` with 2 CPU processes (gloo) against one process, on the shipped sample.

The two runs do not see the same batches (each rank reads its half of every global batch), so
they are compared the way two seeds would be: accuracies within 1 point, the same kind of stop.
Only rank 0 writes: one JSON object on stdout, one checkpoint, receipts naming the world size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from unforget.io.checkpoint import KEY_PROVENANCE, load_checkpoint
from unforget.methods import METHODS as REGISTRY

pytestmark = pytest.mark.slow
# Compared with one process on the sample: the default, ∇τ, the reference-stopped pgu and ltu
# and descend(). Not lur: its maths on 2 ranks is that of one process (look-ahead from the
# rank-averaged gradient, curvature of the global batch; checked exactly by
# test_look_ahead_and_curvature_on_two_ranks_equal_one_process), but on this model one process
# alone ends 3 points of forget accuracy apart, and on different stop rules, across seeds 0-2, and
# another world size reads its batches in another order, like another seed.
METHODS = ("proxy-distill", "nabla-tau", "pgu", "ltu", "finetune")

CONFIG = """
[model]
name = "mlp"
kwargs = {{ hidden = [128] }}
[data]
path = "{data}"
[recipe]
epochs = 6
batch_size = 128
lr = 0.003
seed = 0
"""


def unforget(*args: str | Path, procs: int = 1, ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Run the CLI (under torch.distributed.run when ``procs`` > 1); its one JSON object.

    torchrun exits 1 whenever a worker exits non-zero (an audit verdict), so ``ok`` lists the
    accepted exit codes and the JSON carries the verdict."""
    launcher = [sys.executable, "-m", "unforget"]
    if args[0] != "audit":
        args = (*args, "--force")
    if procs > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "unforget",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [*launcher, *map(str, args), "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode in ok, done.stderr[-2000:]
    return json.loads(done.stdout)  # exactly one object: non-zero ranks print nothing


@dataclass(frozen=True)
class Runs:
    train: dict[int, dict[str, Any]]
    apply: dict[tuple[str, int], dict[str, Any]]
    paths: dict[str, Path]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    config = root / "tiny.toml"
    config.write_text(CONFIG.format(data=sample_dir / "fashion-mnist"))
    paths: dict[str, Path] = {}
    train, applied = {}, {}
    for procs in (1, 2):
        paths[f"train{procs}"] = root / f"train{procs}.safetensors"
        train[procs] = unforget(
            "train", "--config", config, "--out", paths[f"train{procs}"], procs=procs
        )
    for method in METHODS:
        for procs in (1, 2):
            paths[f"{method}{procs}"] = root / f"{method}{procs}.safetensors"
            applied[method, procs] = unforget(
                "apply",
                "--ckpt",
                paths["train1"],
                "--forget",
                sample_dir / "forget_random10.txt",
                "--method",
                method,
                "--out",
                paths[f"{method}{procs}"],
                procs=procs,
            )
    return Runs(train=train, apply=applied, paths=paths)


def test_train_on_two_processes_matches_one(runs: Runs) -> None:
    for split in ("train", "heldout"):
        one, two = (runs.train[p][split]["accuracy"] for p in (1, 2))
        assert abs(one - two) <= 0.01 + 1e-9, (split, one, two)
    meta = load_checkpoint(runs.paths["train2"]).meta_json(KEY_PROVENANCE)
    assert meta["world_size"] == 2 and meta["backend"] == "gloo"
    assert load_checkpoint(runs.paths["train1"]).meta_json(KEY_PROVENANCE)["world_size"] == 1


FINISHED = {"target_reached", "plan_complete_best_kept"}  # proxy-distill's two normal ends


def stop_kind(reason: str) -> str:
    """``forget accuracy reached the held-out level (epoch 11: …)`` -> the part before '('.
    proxy-distill's two normal ends are one kind: which of them closes the tiny model's
    25-step plan changes with the seed in one process (seed 0 ends the plan, seeds 1–3 reach
    the target at step 20–24), so it says nothing about the process count."""
    kind = reason.split("(")[0].strip()
    return "finished" if kind in FINISHED else kind


@pytest.mark.parametrize("method", METHODS)
def test_apply_on_two_processes_matches_one(runs: Runs, method: str) -> None:
    """Accuracies within 1 point and the same kind of stop, except where one process alone
    moves further from seed to seed. ``finetune``'s forget accuracy (2 points): a 600-row
    proportion that another batch order moves by about its standard error, √(0.8·0.2/600) ≈
    1.6 points (``pgu``/``ltu`` drive it to a target). ``proxy-distill``'s forget (3 points)
    and held-out accuracy (1.5 points): its proxy is trained at apply time (3 epochs here), so
    another batch order gives another proxy and other targets; in one process seeds 0–5 end at
    79.8–82.5 % forget and 81.0–82.1 % held-out accuracy (two processes: 79.8 % and 80.9 %)."""
    one, two = runs.apply[method, 1], runs.apply[method, 2]
    wider = {
        ("finetune", "forget"): 0.02,
        ("proxy-distill", "forget"): 0.03,
        ("proxy-distill", "heldout"): 0.015,
    }
    for split in ("forget", "retain_sample", "heldout"):
        a, b = (r["metrics"]["after"][split]["accuracy"] for r in (one, two))
        tolerance = wider.get((method, split), 0.01)
        assert abs(a - b) <= tolerance + 1e-9, (split, a, b)
    assert stop_kind(one["stop_reason"]) == stop_kind(two["stop_reason"])
    assert (one["world_size"], one["backend"]) == (1, None)
    assert (two["world_size"], two["backend"]) == (2, "gloo")
    assert one["steps"] > 0 and two["steps"] > 0


def test_two_process_apply_is_reproducible(runs: Runs, sample_dir: Path, tmp_path: Path) -> None:
    """Same seed, same world size: the same weights, bit for bit."""
    again = tmp_path / "again.safetensors"
    unforget(
        "apply",
        "--ckpt",
        runs.paths["train1"],
        "--forget",
        sample_dir / "forget_random10.txt",
        "--method",
        "pgu",
        "--out",
        again,
        procs=2,
    )
    first, second = load_file(runs.paths["pgu2"]), load_file(again)
    assert first.keys() == second.keys()
    assert all(first[k].equal(second[k]) for k in first)


def test_audit_references_split_over_ranks_equal_sequential_ones(
    runs: Runs, sample_dir: Path, tmp_path: Path
) -> None:
    """Under torchrun each rank trains its share of the references alone: the cached models
    are bit for bit those one process trains, and the verdict is the same."""
    verdicts, caches = {}, {}
    for procs in (1, 2):
        caches[procs] = tmp_path / f"cache{procs}"
        audit = [
            "audit",
            "--ckpt",
            runs.paths["pgu1"],
            "--forget",
            sample_dir / "forget_random10.txt",
            "--original",
            runs.paths["train1"],
            "--refs",
            "2",
            "--cache-dir",
            caches[procs],
        ]
        verdicts[procs] = unforget(*audit, procs=procs, ok=(0, 1, 3, 4, 5))["verdict"]["status"]
    assert verdicts[1] == verdicts[2]
    files = sorted(p.relative_to(caches[1]) for p in caches[1].rglob("*.safetensors"))
    assert len(files) == 2
    assert files == sorted(p.relative_to(caches[2]) for p in caches[2].rglob("*.safetensors"))
    for name in files:
        one, two = load_file(caches[1] / name), load_file(caches[2] / name)
        assert all(one[k].equal(two[k]) for k in one)


TINY = """
[model]
name = "{model}"
kwargs = {{ {kwargs} }}
[data]
path = "{data}"
[recipe]
epochs = {epochs}
batch_size = 64
lr = 0.003
seed = 0
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> tuple[Path, Path]:
    """A 1,200 + 800-row slice of the sample and a manifest of every 10th training ID (120)."""
    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    data.mkdir()
    for split, rows in (("train", 1200), ("heldout", 800)):
        table = pq.read_table(sample_dir / "fashion-mnist" / f"{split}.parquet")
        pq.write_table(table.slice(0, rows), data / f"{split}.parquet")
    ids = pq.read_table(data / "train.parquet", columns=["id"]).column("id").to_pylist()
    manifest = root / "forget.txt"
    manifest.write_text("\n".join(ids[::10]) + "\n")
    return data, manifest


def tiny_model(data: Path, *, model: str, kwargs: str, epochs: int) -> Path:
    """A small model trained on ``data`` in one process."""
    config = data.parent / f"{model}.toml"
    config.write_text(TINY.format(model=model, kwargs=kwargs, data=data, epochs=epochs))
    ckpt = data.parent / f"{model}.safetensors"
    unforget("train", "--config", config, "--out", ckpt)
    return ckpt


@pytest.fixture(scope="module")
def tiny(tiny_data: tuple[Path, Path]) -> tuple[Path, Path]:
    """A 32-unit MLP on the slice, and the manifest."""
    data, manifest = tiny_data
    return tiny_model(data, model="mlp", kwargs="hidden = [32]", epochs=4), manifest


@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_runs_on_two_processes(
    tiny: tuple[Path, Path], method: str, tmp_path: Path
) -> None:
    """Every registered method ends with bitwise the same weights on both ranks: ``apply``
    checks that (``replicas_agree``) before rank 0 writes, and refuses otherwise (exit 1)."""
    ckpt, manifest = tiny
    out = tmp_path / "out.safetensors"
    result = unforget(
        "apply", "--ckpt", ckpt, "--forget", manifest, "--method", method, "--out", out, procs=2
    )
    assert (result["world_size"], result["method"]) == (2, method)
    assert out.exists() and result["steps"] >= 0


@pytest.fixture(scope="module")
def tiny_cnn(tiny_data: tuple[Path, Path]) -> tuple[Path, Path]:
    """A small CNN with BatchNorm on the slice, and the manifest."""
    data, manifest = tiny_data
    return tiny_model(data, model="cnn", kwargs="width = 8", epochs=2), manifest


@pytest.mark.parametrize("method", ["retrain", "proxy-distill"])
def test_batchnorm_models_end_the_same_on_every_rank(
    tiny_cnn: tuple[Path, Path], method: str, tmp_path: Path
) -> None:
    """Methods that train in train mode (``retrain``; ``proxy-distill``'s proxy) update
    BatchNorm statistics on each rank's shard: they are averaged across ranks at the end, so
    a small CNN's ``apply`` still ends with the same weights and buffers on both ranks."""
    ckpt, manifest = tiny_cnn
    out = tmp_path / "out.safetensors"
    result = unforget(
        "apply", "--ckpt", ckpt, "--forget", manifest, "--method", method, "--out", out, procs=2
    )
    assert result["world_size"] == 2 and out.exists()


LOOK_AHEAD = """
import sys

import torch
from torch import nn
from unforget.methods.common import curvature
from unforget.methods.lur import lur_objective
from unforget.runtime import distributed

distributed.init_from_env(torch.device("cpu"))
rank = distributed.world().rank
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
params = dict(model.named_parameters())
xf, xr = torch.randn(8, 6), torch.randn(8, 6)
yf, yr = torch.randint(0, 3, (8,)), torch.randint(0, 3, (8,))


def gradient(forget, retain):
    model.zero_grad()
    total, _, _ = lur_objective(
        model, params, forget, retain, inner_lr=0.5, retain_weight=1.0, create_graph=True
    )
    total.backward()
    distributed.average_gradients(list(params.values()))
    return [p.grad.clone() for p in params.values()]


half = slice(4 * rank, 4 * rank + 4)
torch.manual_seed(1)
sharded = gradient((xf[half], yf[half]), (xr[half], yr[half]))


def top(x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    return curvature(loss, list(params.values()), iterations=20)


lam = top(xf[half], yf[half])
with distributed.local():  # this rank alone, on the whole batch: what one process computes
    whole = gradient((xf, yf), (xr, yr))
    torch.manual_seed(1)
    lam_whole = top(xf, yf)
for a, b in zip(sharded, whole):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
assert abs(lam - lam_whole) <= 1e-4 * lam_whole, (lam, lam_whole)
# one write per rank: torchrun's children write unbuffered, and print() would write "ok", " ",
# the rank and the newline separately, so two ranks' lines could interleave ("okok 0 1")
sys.stdout.write(f"ok {rank}\\n")
"""


def test_look_ahead_and_curvature_on_two_ranks_equal_one_process(tmp_path: Path) -> None:
    """lur's second-order gradient through the look-ahead θ' = θ − η∇L_F, and the curvature
    that sets η: two ranks with half a batch each (gradients averaged) give what one process
    gives on the whole batch. With a per-rank θ' they did not (the objective is not linear in
    the batch), which is why 2-process lur used to unlearn more slowly and stop otherwise."""
    script = tmp_path / "look_ahead.py"
    script.write_text(LOOK_AHEAD)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.split()) == ["0", "1", "ok", "ok"]
