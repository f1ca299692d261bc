"""The one training step (:mod:`unforget.training.step`) and the per-rank sharding it relies on."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from unforget.runtime.device import precision_for
from unforget.runtime.distributed import _EpochSampler
from unforget.training.step import TrainStep, optimizer_for

CPU = precision_for(torch.device("cpu"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("kind", "cls", "kwargs"),
    [
        ("adamw", torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.01}),
        ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    ],
)
def test_eager_optimizers_match_torch_bit_for_bit(kind: str, cls: type, kwargs: dict) -> None:
    """The undecorated optimisers run torch's own update code: identical weights after 20 steps
    to torch's per-parameter loop (ours only skips the torch._dynamo import and takes the
    multi-tensor update, which must not change a bit)."""
    ours, theirs = _model(), _model()
    opt_ours = optimizer_for(kind, list(ours.parameters()), **kwargs)  # type: ignore[arg-type]
    opt_theirs = cls(theirs.parameters(), foreach=False, **kwargs)
    assert isinstance(opt_ours, cls)
    assert opt_ours.defaults["foreach"] is True
    for x, y in _batches(20):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(next(ours.parameters()), next(_model().parameters()))


def test_step_equals_the_hand_written_loop() -> None:
    """TrainStep does what the loops did by hand: zero_grad, backward, step."""
    ours, theirs = _model(), _model()
    step = TrainStep(ours, optimizer_for("sgd", list(ours.parameters()), lr=0.1), precision=CPU)
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x, y in _batches(3):
        loss = step(lambda x=x, y=y: nn.functional.cross_entropy(ours(x), y))
        opt.zero_grad()
        expected = nn.functional.cross_entropy(theirs(x), y)
        expected.backward()
        opt.step()
        assert torch.equal(loss, expected.detach())
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def test_accumulation_equals_one_big_batch() -> None:
    """Two micro-batches of 8 with ``accumulate=2`` = one step on the 16 rows (mean loss):
    ½(∇L₁ + ∇L₂) = ∇ mean over both halves when the halves have equal size."""
    small, big = _model(), _model()
    step = TrainStep(
        small, optimizer_for("sgd", list(small.parameters()), lr=0.5), precision=CPU, accumulate=2
    )
    opt = optimizer_for("sgd", list(big.parameters()), lr=0.5)
    (x1, y1), (x2, y2) = _batches(2)
    before = copy.deepcopy(small.state_dict())
    step(lambda: nn.functional.cross_entropy(small(x1), y1))
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())  # no update yet
    step(lambda: nn.functional.cross_entropy(small(x2), y2))
    opt.zero_grad()
    nn.functional.cross_entropy(big(torch.cat([x1, x2])), torch.cat([y1, y2])).backward()
    opt.step()
    for a, b in zip(small.parameters(), big.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_update() -> None:
    """With clip_norm c and plain SGD at lr 1 the weights move by at most c (in norm)."""
    model = _model()
    step = TrainStep(
        model, optimizer_for("sgd", list(model.parameters()), lr=1.0), precision=CPU, clip_norm=0.01
    )
    before = torch.cat([p.detach().clone().reshape(-1) for p in model.parameters()])
    x, y = _batches(1)[0]
    step(lambda: 1e3 * nn.functional.cross_entropy(model(x), y))
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert 0.0 < float(torch.linalg.vector_norm(after - before)) <= 0.01 * (1 + 1e-4)


def test_flush_reports_a_nonfinite_loss_seen_between_checks() -> None:
    """A NaN loss at any step since the last flush is reported, even if the last is finite."""
    model = _model()
    step = TrainStep(model, optimizer_for("sgd", list(model.parameters()), lr=0.0), precision=CPU)
    x, y = _batches(1)[0]
    step.track(torch.tensor(float("nan")))
    step(lambda: nn.functional.cross_entropy(model(x), y))
    value, finite = step.flush()
    assert not finite and value == pytest.approx(
        float(nn.functional.cross_entropy(model(x), y).detach())
    )
    step(lambda: nn.functional.cross_entropy(model(x), y))
    assert step.flush()[1]  # cleared at the flush


@pytest.mark.parametrize("n", [10, 11])
def test_rank_shards_cover_each_pass_and_reshuffle(n: int) -> None:
    """Two ranks' shards partition every pass (one row repeated when n is odd) and each pass
    is a new permutation, identical on both ranks."""
    data = list(range(n))
    ranks = [_EpochSampler(data, num_replicas=2, rank=r, shuffle=True, seed=3) for r in (0, 1)]
    passes = [[list(s) for s in ranks] for _ in range(2)]
    for shards in passes:
        rows = shards[0] + shards[1]
        assert len(shards[0]) == len(shards[1]) == -(-n // 2)
        assert set(rows) == set(data) and len(rows) - len(set(rows)) == n % 2
    assert passes[0] != passes[1]


def test_the_eager_optimizer_never_imports_dynamo() -> None:
    """The first optimiser step no longer pulls in torch._dynamo (1.3-2 s of CPU at start)."""
    code = (
        "import sys, torch\n"
        "from unforget.training.step import TrainStep, optimizer_for\n"
        "from unforget.runtime.device import precision_for\n"
        "m = torch.nn.Linear(4, 2)\n"
        "s = TrainStep(m, optimizer_for('adamw', list(m.parameters()), lr=0.1),"
        " precision=precision_for(torch.device('cpu')))\n"
        "s(lambda: m(torch.ones(3, 4)).sum()); s.flush()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _row_loader(n: int, batch: int) -> torch.utils.data.DataLoader:
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    data = torch.utils.data.TensorDataset(x, torch.arange(n) % 2, torch.arange(n))
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)


def test_resident_keeps_small_sets_and_streams_large_ones() -> None:
    """A check sample that fits is read once into memory, batch for batch the loader's; one
    over the byte limit stays a loader (10 rows here: 10·(3·4 + 8 + 8) = 280 bytes)."""
    from unforget.methods.loop import resident

    loader = _row_loader(10, 4)
    kept = resident(loader)
    assert isinstance(kept, list) and len(kept) == 3
    for mine, theirs in zip(kept, loader, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert resident(loader, limit=279) is loader


def test_first_rows_are_the_loaders_first_rows_in_the_same_batches() -> None:
    from unforget.methods.loop import first_rows

    loader = _row_loader(10, 4)
    part = list(first_rows(loader, 6))
    assert [len(b[2]) for b in part] == [4, 2]
    assert torch.equal(torch.cat([b[2] for b in part]), torch.arange(6))
    assert torch.equal(part[0][0], next(iter(loader))[0])
    assert first_rows(loader, 10) is loader


def test_eval_sets_check_the_first_rows_of_the_retain_sample_and_of_v() -> None:
    """``at_most`` cuts the checks' accuracy samples to their first rows (proxy-distill checks
    1,024 of the 2,048-row retain sample and of V); the forget check sample is left alone,
    and without ``at_most`` every row is read."""
    from types import SimpleNamespace

    from unforget.methods.loop import EvalSets

    task = SimpleNamespace(
        retain_eval=_row_loader(10, 4), reference=_row_loader(7, 4), forget_eval=_row_loader(9, 4)
    )
    cut = EvalSets.of(task, at_most=5)  # type: ignore[arg-type]
    rows = {
        name: torch.cat([b[2] for b in getattr(cut, name)])
        for name in ("retain", "reference", "forget")
    }
    assert torch.equal(rows["retain"], torch.arange(5)) and torch.equal(
        rows["reference"], torch.arange(5)
    )
    assert torch.equal(rows["forget"], torch.arange(9))
    whole = EvalSets.of(task)  # type: ignore[arg-type]
    assert (
        sum(len(b[2]) for b in whole.retain) == 10 and sum(len(b[2]) for b in whole.reference) == 7
    )
