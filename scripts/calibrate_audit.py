#!/usr/bin/env python3
"""Calibrate the audit's verdict on known cases: exact retrains must PASS, originals must FAIL-LEAK.

    python scripts/calibrate_audit.py                      # the README table
    python scripts/calibrate_audit.py --retrains 8 --originals 4 --sizes 1200 20   # quick look

Setting: the shipped sample (6,000 Fashion-MNIST training rows, the audit's 3,000 held-out
evidence rows) and its 20% forget manifest ``sample_data/forget_random20.txt``. To fit on two
shared cores the models are a smaller, faster stand-in for the sample recipe, stated here and in
the output: an MLP on 2×2-average-pooled images, 196-128-10, AdamW (lr 2e-3), batch 64, 30 epochs,
no augmentation, all models of a role trained together as one batched model; like the
sample model it memorises its training set (train accuracy ~100%, held-out ~85%).

Models are reused, never retrained per audit (audit.md, "Calibrate, don't assume"):
- M exact retrains on the retain set (train minus F), each with its own initialisation and batch
  order. Retrain j is audited as the target with the K retrains after it (cyclically) as its
  references, so M retrains give M audits with no extra training; the positive control is
  original j mod N.
- N originals trained on all rows (they saw F): each is audited as the target against K retrains
  (starting at a different one each time), with original i+1 as its positive control.
Each model is queried once; the audits run :func:`unforget.mia.scoring.audit_signals` (the
CLI's own numpy path) on the cached signals. Smaller |F| are the first n IDs of a fixed
permutation of F (the retrains still excluded all 1,200, so their retain set is the same).

Output: per |F| and role, the PASS / FAIL-LEAK / FAIL-OVER / INCONCLUSIVE rates with
Clopper-Pearson 95% intervals, as a Markdown table (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unforget.mia.exact import clopper_pearson  # noqa: E402
from unforget.mia.results import VerdictRule  # noqa: E402
from unforget.mia.scoring import audit_signals  # noqa: E402

STATUSES = ("PASS", "FAIL-LEAK", "FAIL-OVER", "INCONCLUSIVE")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The calibration's stand-in training recipe (smaller and faster than the sample's)."""

    hidden: int = 128
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3


@dataclass(frozen=True)
class Cached:
    """Signals of one model over F then H (float64), the only thing the audit reads."""

    loss: np.ndarray
    p: np.ndarray
    phi: np.ndarray

    def take(self, index: np.ndarray) -> Cached:
        return Cached(self.loss[index], self.p[index], self.phi[index])


@dataclass(frozen=True)
class Data:
    x_train: torch.Tensor  # (N, 196) float32 in [0, 1], 2×2-pooled 28×28 images
    y_train: torch.Tensor  # (N,) int64
    forget: np.ndarray  # rows of F in the training split, in a fixed random order
    x_eval: torch.Tensor  # F then H
    y_eval: torch.Tensor


def load_data(manifest: Path, *, seed: int) -> Data:
    """Training split, F from the manifest and the audit's own held-out evidence rows H."""
    import pyarrow.compute as pc

    from unforget.data.splits import Split
    from unforget.io.manifest import read_manifest
    from unforget.workflows.workspace import open_workspace

    ws = open_workspace(ROOT / "sample_data/model.safetensors")
    forget = ws.forget_rows(read_manifest(manifest))
    forget = forget[np.random.default_rng(seed).permutation(len(forget))]
    heldout = ws.evidence_rows()

    def arrays(split: Split, rows: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        column = split.dataset.data.column("image").combine_chunks()
        flat = pc.list_flatten(pc.list_flatten(getattr(column, "storage", column)))
        images = flat.to_numpy().reshape(len(split.ids), 1, 28, 28).astype(np.float32) / 255.0
        pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(images), 2).flatten(1)
        labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        if rows is not None:
            return pooled[rows], labels[rows]
        return pooled, labels

    x_train, y_train = arrays(ws.train, None)
    x_h, y_h = arrays(ws.heldout, heldout)
    return Data(
        x_train=x_train,
        y_train=y_train,
        forget=forget,
        x_eval=torch.cat([x_train[forget], x_h]),
        y_eval=torch.cat([y_train[forget], y_h]),
    )


def train_many(
    x: torch.Tensor, y: torch.Tensor, *, count: int, seed: int, recipe: Recipe
) -> nn.Module:
    """Train ``count`` independent MLPs at once, as one batched model (torch.bmm).

    Model m has its own initialisation and its own minibatch order, both drawn from a generator
    seeded with ``seed``; AdamW acts elementwise, so one optimiser over the stacked weights is
    exactly ``count`` separate optimisers. Batching only removes per-step Python overhead.
    """
    gen = torch.Generator().manual_seed(seed)
    d_in, n = x.shape[1], len(x)

    def init(fan_in: int, *shape: int) -> nn.Parameter:
        bound = 1.0 / fan_in**0.5  # nn.Linear's default (Kaiming-uniform with a = √5)
        return nn.Parameter((torch.rand(count, *shape, generator=gen) * 2 - 1) * bound)

    model = _Batched(
        init(d_in, d_in, recipe.hidden), init(d_in, 1, recipe.hidden),
        init(recipe.hidden, recipe.hidden, 10), init(recipe.hidden, 1, 10),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    for _ in range(recipe.epochs):
        order = torch.argsort(torch.rand(count, n, generator=gen), dim=1)
        for batch in order.split(recipe.batch_size, dim=1):
            opt.zero_grad(set_to_none=True)
            logits = model(x[batch])  # (count, B, 10)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y[batch].flatten())
            (loss * count).backward()  # each model's gradient is that of its own mean loss
            opt.step()
    return model.eval()


class _Batched(nn.Module):
    """``count`` MLPs d_in → hidden → 10 with ReLU, evaluated together."""

    def __init__(self, *weights: nn.Parameter) -> None:
        super().__init__()
        self.w1, self.b1, self.w2, self.b2 = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.w1.shape[0], *x.shape)
        return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2


@torch.no_grad()
def signals(model: nn.Module, data: Data) -> list[Cached]:
    """Per model: loss, p and φ = z_y − logsumexp_{j≠y} z_j from float64 logits (audit.md)."""
    return [_signals(z, data.y_eval) for z in model(data.x_eval).double()]


def _signals(z: torch.Tensor, y: torch.Tensor) -> Cached:
    log_p = torch.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)
    phi = z.gather(1, y[:, None]).squeeze(1) - others
    return Cached(loss=(-log_p).numpy(), p=log_p.exp().numpy(), phi=phi.numpy())


def build_models(
    data: Data, *, retrains: int, originals: int, recipe: Recipe
) -> tuple[list[Cached], list[Cached], float]:
    """Train M retrains (without F) and N originals (with F); return their signals."""
    keep = np.ones(len(data.x_train), dtype=bool)
    keep[data.forget] = False
    retain = torch.from_numpy(np.flatnonzero(keep))
    started = time.perf_counter()
    model = train_many(
        data.x_train[retain], data.y_train[retain], count=retrains, seed=1, recipe=recipe
    )
    out_r = signals(model, data)
    model = train_many(data.x_train, data.y_train, count=originals, seed=2, recipe=recipe)
    out_o = signals(model, data)
    return out_r, out_o, time.perf_counter() - started


def audit_counts(
    retrains: list[Cached],
    originals: list[Cached],
    *,
    n_forget: int,
    n_total_forget: int,
    k: int,
    rule: VerdictRule,
    n_boot: int,
    seed: int,
) -> dict[str, Counter[str]]:
    """Verdict counts of every retrain and every original as the target at |F| = n_forget."""
    n_eval = len(retrains[0].p)
    index = np.r_[np.arange(n_forget), np.arange(n_total_forget, n_eval)]
    mask = np.r_[np.ones(n_forget, bool), np.zeros(n_eval - n_total_forget, bool)]
    r = [s.take(index) for s in retrains]
    o = [s.take(index) for s in originals]
    m, n = len(r), len(o)
    if m < k + 1:
        raise ValueError(f"need at least K+1 = {k + 1} retrains, got {m}")
    counts: dict[str, Counter[str]] = {"retrain": Counter(), "original": Counter()}
    rng = np.random.default_rng(seed)
    for j in range(m):
        refs = [r[(j + 1 + t) % m] for t in range(k)]
        v = audit_signals(
            target=r[j], original=o[j % n] if n else None, references=refs,
            is_forget=mask, rule=rule, rng=rng, n_boot=n_boot,
        ).verdict  # fmt: skip
        counts["retrain"][v.status] += 1
    for i in range(n):
        refs = [r[(i + t) % m] for t in range(k)]
        v = audit_signals(
            target=o[i], original=o[(i + 1) % n] if n > 1 else None, references=refs,
            is_forget=mask, rule=rule, rng=rng, n_boot=n_boot,
        ).verdict  # fmt: skip
        counts["original"][v.status] += 1
    return counts


def rate(count: int, total: int) -> str:
    low, high = clopper_pearson(count, total)
    return f"{count}/{total} = {count / total:.0%} [{low:.0%}, {high:.0%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "sample_data/forget_random20.txt")
    parser.add_argument("--retrains", type=int, default=40, help="M exact retrains")
    parser.add_argument("--originals", type=int, default=40, help="N leaking originals")
    parser.add_argument("--refs", type=int, default=4, help="K references per audit")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1200, 100])
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = Recipe()
    data = load_data(args.manifest, seed=args.seed)
    retrains, originals, seconds = build_models(
        data, retrains=args.retrains, originals=args.originals, recipe=recipe
    )
    rule = VerdictRule()
    print(f"recipe: {recipe}; {args.retrains + args.originals} models in {seconds:.0f} s")
    print(f"|H| = {len(data.y_eval) - len(data.forget)}, K = {args.refs}, rule = {rule}\n")
    print("| |F| | target | PASS | FAIL-LEAK | FAIL-OVER | INCONCLUSIVE |")
    print("|---:|---|---|---|---|---|")
    results = {}
    for size in args.sizes:
        counts = audit_counts(
            retrains, originals, n_forget=size, n_total_forget=len(data.forget), k=args.refs,
            rule=rule, n_boot=args.n_boot, seed=args.seed,
        )  # fmt: skip
        for role, c in counts.items():
            total = sum(c.values())
            cells = " | ".join(rate(c[s], total) for s in STATUSES)
            print(f"| {size} | {role} | {cells} |", flush=True)
        results[size] = {role: dict(c) for role, c in counts.items()}
    if args.json:
        args.json.write_text(
            json.dumps({"recipe": vars(recipe), "k": args.refs, "counts": results})
        )


if __name__ == "__main__":
    main()
