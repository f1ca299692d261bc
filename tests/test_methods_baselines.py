"""The baseline methods (methods.md "Baselines"): one shared contract plus each method's own maths.

Contract, through the real ``apply`` pipeline on the tiny MLP (``tiny_ckpt``, 8 epochs on the
6,000 sample images; it generalises: forget accuracy 84% vs held-out 83% on the random manifest):

* class removal (``forget_class_sandal.txt``): every method runs, writes a loadable, finite
  checkpoint whose weights differ from the input, names itself and its resolved options in the
  receipt, and lowers forget accuracy by at least ``CLASS_MIN_DROP``, while held-out accuracy on
  the other classes and retain-sample accuracy stay within ``TOLERANCE`` (``NEGGRAD_TOLERANCE``
  for plain ascent, which has no retain term and, aiming at a retrained model's 0% on the
  removed class, costs about 10 points);
* random 10% (``forget_random10.txt``): the same output checks, held-out and retain-sample
  accuracy within ``TOLERANCE`` (``NEGGRAD_TOLERANCE`` for plain ascent), forget accuracy strictly
  lower for the methods that act on F's labels or losses, and never more than ``NOISE`` higher for
  those that do not (finetune, l1-sparse, ssd: on a model that does not memorise, their forget
  set is statistically the same as the retain set, and they are known to barely move it).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
from torch import nn

from unforget.config.options import as_plain, describe
from unforget.config.spec import RunSpec
from unforget.data.loaders import EVAL_BATCH, Batch, make_loader, source
from unforget.errors import InputError
from unforget.io import checkpoint as ckpt_io
from unforget.io.manifest import read_manifest
from unforget.methods import METHODS, get_method, make_config
from unforget.methods.base import Loader, UnlearnTask
from unforget.methods.random_label import random_wrong_labels
from unforget.methods.salun import mask_digest, saliency_mask
from unforget.methods.scrub import distill_kl, schedule
from unforget.methods.ssd import (
    dampening_factors,
    default_alpha,
    importances,
    squared_gradient_sum,
)
from unforget.models import build_model
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows.unlearn import ApplyRequest, ApplyResult, apply
from unforget.workflows.workspace import open_workspace

# Methods whose contract tests live in a file of their own; every other registered method (a new
# one too) runs through this file's contract tests, so nothing registered goes untested.
OWN_CONTRACT = {
    "pgu": "test_methods_seed",
    "ltu": "test_methods_seed",
    "lur": "test_methods_seed",
    "nabla-tau": "test_nabla_tau",
    "nabla-tau-paper": "test_proxy_distill",
    "proxy-distill": "test_proxy_distill",
}
BASELINES = tuple(name for name in METHODS if name not in OWN_CONTRACT)
READS_FORGET_LABELS = ("retrain", "neggrad", "neggrad+", "random-label", "scrub", "salun")
RANDOM, CLASS = "forget_random10.txt", "forget_class_sandal.txt"
TOLERANCE = 0.08  # absolute accuracy the held-out / retain sample may lose
NEGGRAD_TOLERANCE = 0.12  # plain ascent has no retain term to hold it (class removal: −10)
CLASS_MIN_DROP = 0.10  # a removed class must lose at least 10 points of forget accuracy
NOISE = 0.01  # 6 of 600 forget rows
CPU = precision_for(resolve_device("cpu"))

Run = Callable[..., ApplyResult]


@pytest.fixture(scope="module")
def run(tiny_ckpt: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``apply`` once per (method, manifest, options, spec flags), shared within this module."""
    cache: dict[str, ApplyResult] = {}
    folder = tmp_path_factory.mktemp("baselines")

    def go(
        method: str,
        manifest: str,
        *,
        options: dict[str, str] | None = None,
        flags: dict[str, str] | None = None,
    ) -> ApplyResult:
        key = json.dumps([method, manifest, options, flags], sort_keys=True)
        if key not in cache:
            request = ApplyRequest(
                ckpt=tiny_ckpt,
                manifest=sample_dir / manifest,
                method=method,
                options=options or {},
                flags=flags or {},
                out=folder / f"{len(cache)}.safetensors",
            )
            cache[key] = apply(request, precision=CPU)
        return cache[key]

    return go


def check_output(result: ApplyResult, method: str, tiny_ckpt: Path) -> dict[str, Any]:
    """What every run must satisfy whatever the forget set; returns the receipt as a dict."""
    assert result.receipt is not None
    receipt = result.receipt.as_dict()
    assert receipt["method"] == method
    assert receipt["options"] == as_plain(make_config(get_method(method), {}))
    assert receipt["stop_reason"]
    json.dumps(receipt["method_details"])  # JSON-ready
    original = ckpt_io.load_checkpoint(tiny_ckpt).tensors
    output = ckpt_io.load_checkpoint(result.out).tensors
    assert output.keys() == original.keys()
    assert all(torch.isfinite(t).all() for t in output.values())
    assert any(not torch.equal(output[k], original[k]) for k in original)
    for split in ("forget", "retain_sample", "heldout"):
        assert math.isfinite(receipt["metrics"]["after"][split]["loss"])
    return receipt


@pytest.mark.parametrize("method", BASELINES)
def test_contract_class_removal(method: str, run: Run, tiny_ckpt: Path) -> None:
    receipt = check_output(run(method, CLASS), method, tiny_ckpt)
    before, after = receipt["metrics"]["before"], receipt["metrics"]["after"]
    tolerance = NEGGRAD_TOLERANCE if method == "neggrad" else TOLERANCE
    assert len(receipt["removed_classes"]) == 1
    assert after["forget"]["accuracy"] < before["forget"]["accuracy"] - CLASS_MIN_DROP
    other = "heldout_other_classes"
    assert after[other]["accuracy"] >= before[other]["accuracy"] - tolerance
    assert after["retain_sample"]["accuracy"] >= before["retain_sample"]["accuracy"] - tolerance


@pytest.mark.parametrize("method", BASELINES)
def test_contract_random_forgetting(method: str, run: Run, tiny_ckpt: Path) -> None:
    receipt = check_output(run(method, RANDOM), method, tiny_ckpt)
    before, after = receipt["metrics"]["before"], receipt["metrics"]["after"]
    tolerance = NEGGRAD_TOLERANCE if method == "neggrad" else TOLERANCE
    assert after["heldout"]["accuracy"] >= before["heldout"]["accuracy"] - tolerance
    assert after["retain_sample"]["accuracy"] >= before["retain_sample"]["accuracy"] - tolerance
    if method in READS_FORGET_LABELS:
        assert after["forget"]["accuracy"] < before["forget"]["accuracy"]
    else:
        # Without forget labels the forget rows move like unseen data: fine-tuning on the retain
        # set may improve generalisation, and with it forget accuracy, by float32-level
        # differences in training (thread count) more or less; a gain beyond held-out's gain
        # plus a few rows would mean the forget set was learnt.
        generalisation = max(0.0, after["heldout"]["accuracy"] - before["heldout"]["accuracy"])
        assert after["forget"]["accuracy"] <= before["forget"]["accuracy"] + generalisation + NOISE


def test_retrain_records_recipe(run: Run) -> None:
    details = run("retrain", RANDOM).receipt.method_details  # type: ignore[union-attr]
    assert details["epochs"] == 8 and details["retain_rows"] == 5400


def test_neggrad_stops_at_reference_accuracy(run: Run) -> None:
    """The brake: ascent ends once the forget probe is no better than the reference split."""
    receipt = run("neggrad", RANDOM).receipt
    assert receipt is not None
    details = receipt.method_details
    assert receipt.stop_reason == "forget_at_reference"
    assert receipt.steps < details["max_steps"]
    assert details["target_accuracy"] == details["reference_accuracy"]  # no class removed
    assert details["history"][-1]["forget_accuracy"] <= details["target_accuracy"]


def test_neggrad_aims_at_zero_for_a_removed_class(run: Run) -> None:
    """A model retrained without the sandal class never predicts it: the target is 0%."""
    details = run("neggrad", CLASS).receipt.method_details  # type: ignore[union-attr]
    assert details["target_accuracy"] == 0.0 < details["reference_accuracy"]


def test_l1_sparse_shrinks_the_weights(run: Run) -> None:
    details = run("l1-sparse", RANDOM).receipt.method_details  # type: ignore[union-attr]
    assert details["l1_norm_end"] < details["l1_norm_start"]


# --- salun -----------------------------------------------------------------------------------


def original_mask(tiny_ckpt: Path, manifest: Path) -> dict[str, torch.Tensor]:
    """SalUn's mask recomputed from the input checkpoint, over the forget rows in apply's
    evaluation order and batch size (so the float sums, and the mask, are bit-identical)."""
    ws = open_workspace(tiny_ckpt)
    rows = ws.forget_rows(read_manifest(manifest))
    src = source(ws.train, rows, spec=ws.spec.data, info=ws.info, encoder=ws.encoder)
    loader = make_loader(src, batch_size=EVAL_BATCH, shuffle=False, seed=0, device=CPU.device)
    model = build_model(ws.spec.model, input_shape=ws.info.shape, num_classes=ws.info.num_classes)
    ckpt_io.load_into(model, ws.checkpoint)
    model.eval()
    return saliency_mask(model, loader, CPU, fraction=0.5)


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        ({}, {}),
        ({"recipe.optimizer": "adamw", "recipe.weight_decay": "0.1"}, {}),
        (  # plain SGD steps are not normalised: at 0.5× the guard stops this AdamW-trained MLP
            {"recipe.optimizer": "sgd", "recipe.momentum": "0.9", "recipe.weight_decay": "0.05"},
            {"lr_scale": "0.25"},
        ),
    ],
    ids=["recipe", "adamw-decay", "sgd-momentum-decay"],
)
def test_salun_leaves_unmasked_weights_bit_identical(
    flags: dict[str, str], options: dict[str, str], run: Run, tiny_ckpt: Path, sample_dir: Path
) -> None:
    """Weight decay and momentum act on every parameter an optimiser holds; the weights outside
    the saliency mask must still come out bit for bit as they went in, and half the weights (the
    mask) are the only ones allowed to move."""
    result = run("salun", RANDOM, flags=flags, options=options)
    assert result.receipt is not None
    mask = original_mask(tiny_ckpt, sample_dir / RANDOM)
    assert mask_digest(mask) == result.receipt.method_details["mask_sha256"]
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.5 * total)
    original = ckpt_io.load_checkpoint(tiny_ckpt).tensors
    output = ckpt_io.load_checkpoint(result.out).tensors
    moved = 0
    for name, keep in mask.items():
        assert torch.equal(output[name][~keep], original[name][~keep]), name
        moved += int((output[name][keep] != original[name][keep]).sum())
    assert moved > 0


# --- ssd -------------------------------------------------------------------------------------


def test_ssd_dampening_by_hand() -> None:
    """α = 10, λ = 1:
    entry 0: []_F = 10 > 10·0.5 = 5  -> selected, β = min(1·0.5/10, 1) = 0.05
    entry 1: []_F = 1  > 10·1 = 10?  -> no, β = 1
    entry 2: []_F = 50 > 10·4 = 40   -> selected, β = min(4/50, 1) = 0.08
    entry 3: []_F = 0  > 10·0 = 0?   -> no (never divide by a zero importance), β = 1
    With λ = 20 entry 0 is still selected but β = min(20·0.5/10, 1) = 1: nothing moves."""
    forget = torch.tensor([10.0, 1.0, 50.0, 0.0])
    full = torch.tensor([0.5, 1.0, 4.0, 0.0])
    factors = dampening_factors(forget, full, alpha=10.0, lam=1.0)
    assert torch.allclose(factors, torch.tensor([0.05, 1.0, 0.08, 1.0]))
    theta = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(theta * factors, torch.tensor([0.05, 2.0, 0.24, 4.0]))
    capped = dampening_factors(forget, full, alpha=10.0, lam=20.0)  # entry 2: min(1.6, 1) = 1
    assert torch.equal(capped, torch.ones(4))


def test_ssd_default_alpha_is_a_retain_ratio() -> None:
    """With []_D = p·[]_F + (1 − p)·[]_R, []_F > α(ρ, p)·[]_D selects exactly []_F > ρ·[]_R;
    at p → 0 α is the paper's 10. The paper's fixed α = 10 selects nothing once p ≥ 10%:
    10·[]_D = 10p·[]_F + 10(1 − p)·[]_R ≥ []_F."""
    assert default_alpha(10.0, 0.0) == 10.0
    generator = torch.Generator().manual_seed(0)
    forget = torch.rand(10_000, generator=generator) * 20
    retain = torch.rand(10_000, generator=generator)
    for p in (0.01, 0.1, 0.3):
        full = p * forget + (1 - p) * retain
        by_alpha = forget > default_alpha(10.0, p) * full
        by_ratio = forget > 10.0 * retain
        margin = (forget - 10.0 * retain).abs() > 1e-4
        assert torch.equal(by_alpha[margin], by_ratio[margin])
        assert by_alpha.any()
        if p >= 0.1:
            assert not (forget > 10.0 * full).any()


def batches(n: int, *, seed: int, label: int | None = None) -> Loader:
    """Host batches ``(x, y, rows)`` of 4-sample 1×6×6 images: a list standing in for a loader
    (methods only iterate loaders and take their length)."""
    generator = torch.Generator().manual_seed(seed)
    out: list[Batch] = []
    for i in range(n):
        x = torch.rand(4, 1, 6, 6, generator=generator)
        y = (
            torch.randint(0, 3, (4,), generator=generator)
            if label is None
            else torch.full((4,), label)
        )
        if label is not None:
            x[:, :, :3] += 1.0  # the forget class has its own pattern
        out.append((x, y, torch.arange(4 * i, 4 * i + 4)))
    return cast(Loader, out)


def small_net() -> nn.Module:
    """Conv + BatchNorm (per-sample gradients via torch.func) and linear layers (closed form)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(32, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, 3),
    ).eval()


def test_squared_gradient_sum_matches_one_sample_at_a_time() -> None:
    """The fast per-sample squares equal a slow loop of one backward pass per sample."""
    model, data = small_net(), batches(3, seed=1)
    fast, count = squared_gradient_sum(model, data, CPU)
    slow = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for x, y, _ in data:
        for i in range(len(y)):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            for name, p in model.named_parameters():
                slow[name] += p.grad.square()  # type: ignore[union-attr]
    assert count == 12
    for name in slow:
        assert torch.allclose(fast[name], slow[name], rtol=1e-4, atol=1e-9), name


def synthetic_task(model: nn.Module) -> UnlearnTask:
    forget, retain = batches(2, seed=2, label=2), batches(6, seed=3)
    return UnlearnTask(
        model=model,
        forget=forget,
        retain=retain,
        reference=None,
        retain_eval=retain,
        forget_eval=forget,
        precision=CPU,
        spec=RunSpec(),
        seed=0,
        n_forget=8,
        n_retain=24,
    )


def test_ssd_changes_only_selected_parameters() -> None:
    """Run the method on a synthetic task; recompute []_F, []_D on an untouched copy: every
    entry with β < 1 is scaled by exactly β, every other entry is bit-identical."""
    model = small_net()
    original = copy.deepcopy(model)
    task = synthetic_task(model)
    config = make_config(get_method("ssd"), {"alpha": "1.5"})
    outcome = get_method("ssd").run(task, config)
    scores = importances(original, synthetic_task(original))
    after, before = dict(model.named_parameters()), dict(original.named_parameters())
    changed_total = 0
    for name, forget in scores.forget.items():
        factors = dampening_factors(forget, scores.full[name], alpha=1.5, lam=1.0)
        moved = after[name].detach() != before[name].detach()
        assert torch.equal(moved, (factors < 1) & (before[name].detach() != 0)), name
        assert torch.equal(after[name].detach(), before[name].detach() * factors), name
        changed_total += int(moved.sum())
    assert outcome.weights_changed and changed_total == outcome.details["dampened_parameters"]


# --- random labels and scrub -----------------------------------------------------------------


def test_random_wrong_labels_are_wrong_and_cover_every_other_class() -> None:
    y = torch.arange(10).repeat(500)
    wrong = random_wrong_labels(y, 10, torch.Generator().manual_seed(0))
    assert not (wrong == y).any()
    for c in range(10):
        assert set(wrong[y == c].tolist()) == set(range(10)) - {c}


def test_distill_kl() -> None:
    """d = T²·KL(softmax(t/T) ‖ softmax(s/T)); zero for equal logits; one worked value:
    t = (0, 0), s = (ln 3, 0), T = 1: KL((½, ½) ‖ (¾, ¼)) = ½ ln(⅔) + ½ ln 2 = ½ ln(4/3)."""
    teacher = torch.zeros(1, 2)
    assert float(distill_kl(teacher, teacher, 4.0)) == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[math.log(3.0), 0.0]])
    assert float(distill_kl(student, teacher, 1.0)) == pytest.approx(0.5 * math.log(4 / 3))


def test_scrub_schedule_order() -> None:
    """3 rounds, 2 with a max pass: F F R R | F F R R | R R (retain cycles)."""
    task = SimpleNamespace(forget=["f1", "f2"], retain=["r1", "r2", "r3"])
    plan = list(schedule(task, rounds=3, max_rounds=2, retain_steps=2))  # type: ignore[arg-type]
    assert plan == [
        (True, "f1"),
        (True, "f2"),
        (False, "r1"),
        (False, "r2"),
        (True, "f1"),
        (True, "f2"),
        (False, "r3"),
        (False, "r1"),
        (False, "r2"),
        (False, "r3"),
    ]


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", BASELINES)
def test_registry_and_defaults(method: str) -> None:
    implementation = get_method(method)
    assert implementation.info.name == method
    assert implementation.info.paper and implementation.info.needs
    make_config(implementation, {})
    for row in describe(implementation.Config):
        assert row["help"], f"{method}.{row['name']} has no help text"


@pytest.mark.parametrize(
    ("method", "values"),
    [
        ("retrain", {"epochs": "3"}),
        ("finetune", {"lr_scale": "0"}),
        ("finetune", {"epochs": "-1"}),
        ("finetune", {"lr_scale": "fast"}),
        ("neggrad", {"check_every": "0"}),
        ("neggrad+", {"beta": "1.5"}),
        ("random-label", {"retain_weight": "-1"}),
        ("scrub", {"max_rounds": "5"}),
        ("scrub", {"temperature": "0"}),
        ("salun", {"fraction": "0"}),
        ("l1-sparse", {"gamma": "-0.1"}),
        ("ssd", {"lam": "0"}),
        ("ssd", {"alpha": "-2"}),
    ],
)
def test_bad_options_are_input_errors(method: str, values: dict[str, str]) -> None:
    with pytest.raises(InputError):
        make_config(get_method(method), values)


def test_bad_option_value_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="beta"):
        get_method("neggrad+").Config(beta=1.0)


def test_bad_option_fails_before_anything_is_written(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never.safetensors"
    request = ApplyRequest(
        ckpt=tiny_ckpt,
        manifest=sample_dir / RANDOM,
        method="salun",
        options={"fraction": "2"},
        out=out,
    )
    with pytest.raises(InputError, match="fraction"):
        apply(request, precision=CPU)
    assert not out.exists()


def test_every_registered_method_has_a_contract_test() -> None:
    assert set(OWN_CONTRACT) <= set(METHODS)
    assert set(BASELINES) | set(OWN_CONTRACT) == set(METHODS)
