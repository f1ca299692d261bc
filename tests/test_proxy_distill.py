"""proxy-distill (the default method) and nabla-tau-paper: target maths, options, and the sample.

Targets: a forget sample whose proxy loss sits at quantile u of the proxy's losses on the
reference split gets t = Q_orig(u), the original model's held-out loss at that quantile; its
target distribution q keeps the proxy's shape over the other classes with q_y = e^(−t); the
forget term is mean KL(q ‖ p_θ).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unforget.errors import GuardRailError
from unforget.methods import DEFAULT_METHOD, get_method, make_config
from unforget.methods.nabla_tau_paper import PaperConfig, paper_forget_epochs, paper_loss
from unforget.methods.proxy_distill import (
    ProxyDistillConfig,
    _in_share,
    auto_temperature,
    distill_term,
    plan_steps,
    quantile_map,
    step_floor,
    target_distribution,
)
from unforget.runtime.device import precision_for, resolve_device

CPU = precision_for(resolve_device("cpu"))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- quantile re-levelling -----------------------------------------------------------------------


def test_quantile_map_worked_example() -> None:
    """Proxy losses on V: 1, 2, 3, 4; original's: 10, 20, 30, 40. A proxy loss of 2 has 2 of 4
    source values at or below it: u = 0.5, position 0.5·3 = 1.5 → 25 (between 20 and 30)."""
    out = quantile_map(t(2.0), t(1, 2, 3, 4), t(10, 20, 30, 40))
    assert out.item() == pytest.approx(25.0)


def test_quantile_map_clamps_to_the_target_range() -> None:
    """Below every source value u is clamped to ½/n, above every one to 1 − ½/n."""
    out = quantile_map(t(-5.0, 99.0), t(1, 2, 3, 4), t(10, 20, 30, 40))
    assert 10.0 <= out[0].item() < 20.0 and 30.0 < out[1].item() <= 40.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 20), min_size=2, max_size=30),
    st.lists(st.floats(0, 20), min_size=2, max_size=30),
)
def test_quantile_map_is_monotone_and_inside_the_target(
    values: list[float], ref: list[float]
) -> None:
    source = torch.tensor(sorted(ref), dtype=torch.float64)
    target = source * 3 + 1
    x = torch.tensor(sorted(values), dtype=torch.float64)
    y = quantile_map(x, source, target)
    assert bool((y[1:] >= y[:-1] - 1e-12).all())
    assert y.min() >= target.min() - 1e-9 and y.max() <= target.max() + 1e-9


# --- target distribution and forget term ---------------------------------------------------------


def test_target_distribution_sets_the_true_class_and_keeps_the_shape() -> None:
    """Proxy (0.5, 0.3, 0.2) with label 0 and t = ln 2: q_0 = ½, the other ½ split 3:2."""
    q = target_distribution(t(0.5, 0.3, 0.2)[None], torch.tensor([0]), t(math.log(2)))
    assert q[0].tolist() == pytest.approx([0.5, 0.3, 0.2])
    q = target_distribution(t(0.9, 0.06, 0.04)[None], torch.tensor([0]), t(math.log(4)))
    assert q[0].tolist() == pytest.approx([0.25, 0.45, 0.30])


def test_target_distribution_with_all_mass_on_the_true_class_spreads_the_rest() -> None:
    q = target_distribution(t(1.0, 0.0, 0.0)[None], torch.tensor([0]), t(math.log(2)))
    assert q[0].tolist() == pytest.approx([0.5, 0.25, 0.25])


@pytest.mark.parametrize("match", ["distribution", "true_class"])
def test_distill_term_is_zero_at_the_target_and_two_sided(match: str) -> None:
    """D(q ‖ p) = 0 when p = q; a prediction above OR below q's true-class level costs."""
    y = torch.tensor([0])
    q = target_distribution(t(0.5, 0.3, 0.2)[None], y, t(math.log(2))).float()
    assert distill_term(torch.log(q), q, y, match=match).item() == pytest.approx(0.0, abs=1e-6)
    for p_true in (0.9, 0.1):
        rest = (1 - p_true) / 2
        logits = torch.log(torch.tensor([[p_true, rest, rest]]))
        assert distill_term(logits, q, y, match=match).item() > 0.01
        logits.requires_grad_(True)
        distill_term(logits, q, y, match=match).backward()
        grad = logits.grad[0, 0].item()  # type: ignore[index]
        assert (grad > 0) == (p_true > 0.5)  # descent lowers a too-high p_y, raises a too-low one


def test_true_class_match_ignores_the_split_of_the_other_classes() -> None:
    """Only p_y is pulled: with p_y at its target, moving mass between the other classes costs
    nothing (the distribution match charges it); the value is the two-outcome KL."""
    y = torch.tensor([0])
    q = torch.tensor([[0.6, 0.3, 0.1]])
    logits = torch.log(torch.tensor([[0.6, 0.05, 0.35]]))
    assert distill_term(logits, q, y, match="true_class").item() == pytest.approx(0.0, abs=1e-6)
    assert distill_term(logits, q, y, match="distribution").item() > 0.1
    logits = torch.log(torch.tensor([[0.9, 0.05, 0.05]]))
    expected = 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)
    assert distill_term(logits, q, y, match="true_class").item() == pytest.approx(
        expected, rel=1e-5
    )


def test_removed_classes_get_no_target_mass() -> None:
    """A proxy that saw a class removed whole (the cross-fitted ones saw every class) still
    gives targets without it: its mass moves to the other classes in proportion."""
    from unforget.methods.proxy_distill import without_classes

    probs = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = without_classes(probs, np.array([0]))
    assert out[0].tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert out[1].tolist() == [0.0, 0.0, 0.0]  # all its mass was there: left for the uniform
    assert torch.equal(without_classes(probs, np.array([], dtype=np.int64)), probs)


def test_proxy_share_is_deterministic_and_about_the_share() -> None:
    rows = torch.arange(20_000)
    keep = _in_share(rows, 0.5, seed=0)
    assert torch.equal(keep, _in_share(rows, 0.5, seed=0))
    assert 0.47 < float(keep.float().mean()) < 0.53
    assert not torch.equal(keep, _in_share(rows, 0.5, seed=1))


# --- options -------------------------------------------------------------------------------------


def test_default_method_is_proxy_distill_with_valid_defaults() -> None:
    assert DEFAULT_METHOD == "proxy-distill"
    method = get_method(DEFAULT_METHOD)
    assert isinstance(make_config(method, {}), ProxyDistillConfig)
    assert set(method.info.needs) == {"forget", "retain", "reference"}


def test_config_problems_are_reported_together() -> None:
    with pytest.raises(ValueError) as err:
        ProxyDistillConfig(proxy_share=0, alpha=1.5, lr=-1)
    assert "proxy_share" in str(err.value) and "alpha" in str(err.value)
    assert "lr" in str(err.value)


def test_plan_grows_with_what_there_is_to_undo_within_its_bounds() -> None:
    """Draws per forget row ("passes", a real number) = 5 · D₀ at the default budget; the
    floor 450 steps for a memorising model (D₀ ≥ 0.6: the shipped sample's 0.62–0.78),
    falling in proportion to D₀ down to 100 (full Fashion-MNIST's D₀ ≈ 0.14 gives 105–107);
    the cap and the pass bounds hold, and twice the budget is twice the passes and twice the
    floor."""
    c = ProxyDistillConfig()
    assert plan_steps(0.63, forget_batches=19, cap=450, config=c) == (450, 3.15)  # the sample
    assert plan_steps(0.63, forget_batches=19, cap=300, config=c) == (300, 3.15)  # cap > floor
    assert plan_steps(0.142, forget_batches=5, cap=696, config=c) == (107, 0.71)  # FMNIST 1 %
    # 30 %: 0.7 of a pass (98 steps) is under the floor the same D₀ gives
    assert plan_steps(0.139, forget_batches=141, cap=492, config=c) == (105, 0.695)
    assert plan_steps(0.7, forget_batches=200, cap=2000, config=c) == (700, 3.5)  # half a pass
    assert plan_steps(0.4, forget_batches=5, cap=696, config=c) == (300, 2.0)  # floor ∝ D₀
    assert plan_steps(5.0, forget_batches=19, cap=2000, config=c) == (475, 25.0)  # passes bind
    assert plan_steps(13.6, forget_batches=47, cap=10_000, config=c) == (40 * 47, 40.0)
    assert plan_steps(0.0, forget_batches=47, cap=633, config=c) == (100, 0.0)
    twice = ProxyDistillConfig(budget=0.3)  # twice the passes and the floor (the cap: caller)
    assert plan_steps(0.3215, forget_batches=141, cap=984, config=twice) == (484, 3.215)
    assert plan_steps(3.0, forget_batches=19, cap=4000, config=twice) == (900, 30.0)
    assert plan_steps(0.142, forget_batches=5, cap=1392, config=twice) == (214, 1.42)
    floor = ProxyDistillConfig(min_forget_epochs=3)
    assert plan_steps(0.05, forget_batches=141, cap=492, config=floor) == (423, 3.0)
    low = ProxyDistillConfig(min_steps=20)  # a floor set below least_steps is the floor
    assert plan_steps(0.14, forget_batches=5, cap=696, config=low) == (20, 0.7)
    floors = [plan_steps(d / 100, forget_batches=1, cap=10_000, config=c)[0] for d in range(80)]
    assert floors == sorted(floors) and floors[0] == 100 and floors[-1] == 450


def test_auto_temperature_softens_less_the_more_each_row_is_drawn() -> None:
    """T = 1 + 13.5/E, at most 3, E the plan's draws per forget row: the 107-step floor over 1 %
    of full Fashion-MNIST (600 rows, batch 128: E ≈ 22.8) gives ≈ 1.59, the quick start's 450
    steps over 20 % of the sample (1,200 rows, batch 64: E = 24) ≈ 1.56, 200 steps there
    (E ≈ 10.7) ≈ 2.27, 10 % of full Fashion-MNIST (6,000 rows, 105 steps: E ≈ 2.2) the cap;
    never below 1, never rising."""
    assert auto_temperature(107 * 128 / 600) == pytest.approx(1.5914, abs=1e-4)
    assert auto_temperature(450 * 64 / 1200) == pytest.approx(1.5625, abs=1e-4)
    assert auto_temperature(200 * 64 / 1200) == pytest.approx(2.2656, abs=1e-4)
    assert auto_temperature(105 * 128 / 6000) == 3.0 == auto_temperature(0.0)
    values = [auto_temperature(e) for e in np.linspace(0.5, 500, 200)]
    assert all(a >= b for a, b in itertools.pairwise(values)) and min(values) > 1


# --- nabla-tau-paper ------------------------------------------------------------------------------


def test_paper_defaults_are_the_authors() -> None:
    c = PaperConfig()
    assert (c.lr, c.weight_decay, c.lr_end, c.alpha0, c.max_forget_epochs, c.tau_every) == (
        1e-3,
        0.01,
        0.1,
        None,
        80,
        5,
    )
    assert get_method("nabla-tau-paper").info.name == "nabla-tau-paper"


def test_paper_length_and_loss_worked_example() -> None:
    """E = ⌊6·85/(2·10)⌋ = 25; 300 R-batches / 1 F-batch gives 900, capped at 80. Loss with
    τ = 2, L_F = 1.5, L_R = 0.4, α = 0.25: 0.25·0.5² + 0.75·0.4 = 0.3625; L_F above τ: ReLU → 0."""
    assert paper_forget_epochs(85, 10, cap=80) == 25
    assert paper_forget_epochs(300, 1, cap=80) == 80
    loss = paper_loss(torch.tensor(1.5), torch.tensor(0.4), tau=2.0, alpha=0.25)
    assert loss.item() == pytest.approx(0.3625)
    loss = paper_loss(torch.tensor(2.5), torch.tensor(0.4), tau=2.0, alpha=0.25)
    assert loss.item() == pytest.approx(0.3)


# --- contract on the tiny checkpoint (the shared apply pipeline) ----------------------------------


@pytest.mark.parametrize("method", ["proxy-distill", "nabla-tau-paper"])
def test_contract_class_removal(
    method: str, tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """Both new methods through ``apply`` on a whole-class request: a finite, changed checkpoint
    that names itself and its options; the class loses at least 10 points of forget accuracy
    while held-out accuracy on the other classes stays within 8 points (the baselines' contract).
    The default takes the removed class's targets from the proxy, which never saw the class."""
    import json

    from unforget.config.options import as_plain
    from unforget.workflows.unlearn import ApplyRequest, apply

    result = apply(
        ApplyRequest(
            ckpt=tiny_ckpt,
            manifest=sample_dir / "forget_class_sandal.txt",
            method=method,
            out=tmp_path / "u.safetensors",
        ),
        precision=CPU,
    )
    assert result.receipt is not None
    receipt = result.receipt.as_dict()
    assert receipt["method"] == method and receipt["stop_reason"]
    assert receipt["options"] == as_plain(make_config(get_method(method), {}))
    json.dumps(receipt["method_details"])
    before, after = receipt["metrics"]["before"], receipt["metrics"]["after"]
    assert after["forget"]["accuracy"] < before["forget"]["accuracy"] - 0.10
    other = "heldout_other_classes"
    assert after[other]["accuracy"] >= before[other]["accuracy"] - 0.08
    if method == "proxy-distill":
        details = receipt["method_details"]
        assert details["targets"]["forget_rows_of_removed_classes"] == 600
        # the targets the loop pulls to are softened to the plan's draws per forget row
        assert details["temperature_from"] == "plan"
        expected = auto_temperature(details["forget_draws_per_row"])
        assert details["temperature"] == pytest.approx(expected, abs=1e-3)
        assert details["targets"]["temperature"] == details["temperature"]


def test_a_set_temperature_is_used_as_given(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """``--set temperature=T`` fixes the targets' T: no softening from the plan, and the plan
    is sized against those same targets."""
    from unforget.workflows.unlearn import ApplyRequest, apply

    result = apply(
        ApplyRequest(
            ckpt=tiny_ckpt,
            manifest=sample_dir / "forget_random10.txt",
            options={"temperature": "1.25", "min_steps": "20", "budget": "0.02"},
            out=tmp_path / "u.safetensors",
        ),
        precision=CPU,
    )
    assert result.receipt is not None
    details = result.receipt.method_details
    assert details["temperature_from"] == "option" and details["temperature"] == 1.25
    assert details["targets"]["temperature"] == 1.25
    assert details["sizing_divergence"] == details["start_divergence"]


def test_a_guard_stop_at_the_first_check_writes_nothing(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """When the accuracy guard fires at the first check, the only state to keep is the
    original's: apply fails (GuardRailError) and writes nothing, instead of a copy of the
    original named as unlearned (measured: a 49-step plan at 30 % of full
    Fashion-MNIST took retain accuracy from 92.5 % to 75.4 % by its first check)."""
    from unforget.workflows.unlearn import ApplyRequest, apply

    out = tmp_path / "u.safetensors"
    options = {"lr": "1.0", "warmup": "0", "min_steps": "16", "least_steps": "16"}
    with pytest.raises(GuardRailError, match="by the first check"):
        apply(
            ApplyRequest(
                ckpt=tiny_ckpt,
                manifest=sample_dir / "forget_random10.txt",
                options={**options, "budget": "0.02"},
                out=out,
            ),
            precision=CPU,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- the sample (slow) ----------------------------------------------------------------------------


def _random_manifest(ckpt: Path, path: Path, fraction: float, seed: int) -> Path:
    from unforget.workflows.workspace import open_workspace

    ids = open_workspace(ckpt).train.ids
    rows = np.random.default_rng(seed).choice(len(ids), int(fraction * len(ids)), replace=False)
    path.write_text("\n".join(ids[r] for r in rows) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_default_forgets_the_sample_to_heldout_level(
    sample_ckpt: Path, tmp_path: Path, fraction: float
) -> None:
    """Random 10 % and 30 % of the sample, no GuardRailError. At 10 % forget accuracy ends within
    3 points of held-out accuracy (measured 0.875 vs 0.858 after the 450-step floor; exact
    retrains of the shipped manifests end 1.7 points above held-out) and held-out accuracy
    within 1.5 points of where it was (measured 0.1). At 30 % the loop, capped at 0.15
    recipe-epochs (396 steps, under the 450-step floor its D₀ asks for), does not get there on
    this memorising model: within 6 points (measured 0.896 vs 0.850) and held-out within 2
    points (measured 0.9). No proxies file here: the proxy is trained at apply time
    (``method_details.proxy.steps``)."""
    from unforget.workflows.unlearn import ApplyRequest, apply

    manifest = _random_manifest(sample_ckpt, tmp_path / "ids.txt", fraction, seed=3)
    try:
        result = apply(
            ApplyRequest(ckpt=sample_ckpt, manifest=manifest, out=tmp_path / "u.safetensors"),
            precision=CPU,
        )
    except GuardRailError as exc:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"GuardRailError at {fraction:.0%}: {exc}")
    receipt = result.receipt
    assert receipt is not None and receipt.provenance.method == "proxy-distill"
    before, after = receipt.before, receipt.after
    assert before.forget.accuracy > before.heldout.accuracy + 0.08  # there was something to forget
    tolerance = 0.03 if fraction < 0.2 else 0.06
    assert abs(after.forget.accuracy - after.heldout.accuracy) <= tolerance
    assert before.heldout.accuracy - after.heldout.accuracy <= (0.015 if fraction < 0.2 else 0.02)
    details = receipt.method_details
    assert details["proxy"]["steps"] > 0 and receipt.stop_reason
    assert 0 < receipt.steps <= details["planned_steps"]
    # the receipt's floor is the rule's for the measured D₀; the plan honours it within the cap
    assert details["step_floor"] == step_floor(details["sizing_divergence"], ProxyDistillConfig())
    assert details["planned_steps"] >= min(details["step_floor"], details["step_cap"])
    assert details["planned_steps"] <= details["step_cap"]


def test_focus_keeps_the_forget_term_size_and_moves_weight_to_the_tail() -> None:
    """focus=0 is the plain batch mean; γ > 0 leaves a batch of equal KLs unchanged (weights of
    mean 1) and gives the row furthest from its target the larger share of the gradient."""
    from unforget.methods.proxy_distill import distill_term

    torch.manual_seed(0)
    q = torch.softmax(torch.randn(6, 4), 1)
    logits = torch.randn(6, 4)
    y = torch.zeros(6, dtype=torch.long)
    plain = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), q, reduction="batchmean")
    assert torch.allclose(distill_term(logits, q, y), plain)
    alike_q, alike_z = q[:1].repeat(6, 1), logits[:1].repeat(6, 1)  # six equal KLs
    equal = distill_term(alike_z, alike_q, y)
    assert torch.allclose(distill_term(alike_z, alike_q, y, focus=2.0), equal, rtol=1e-5)
    grads = []
    for focus in (0.0, 1.0):
        z = logits.clone().requires_grad_(True)
        distill_term(z, q, y, focus=focus).backward()
        assert z.grad is not None
        grads.append(z.grad.norm(dim=1))
    per_row = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), q, reduction="none").sum(1)
    far, near = int(per_row.argmax()), int(per_row.argmin())
    assert grads[1][far] / grads[1][near] > grads[0][far] / grads[0][near]


def test_priority_stream_draws_where_the_targets_are_unmet(tiny_ckpt: Path) -> None:
    """Rows are drawn ∝ (1 − mix)·D/ΣD + mix/|F|: a row far from its target is drawn far more
    often than rows at theirs, every row keeps the mix share, and recorded divergences replace
    the priorities only at :meth:`refresh` (no host read between checks)."""
    from unforget.methods.proxy_distill import PriorityStream
    from unforget.workflows.workspace import open_workspace

    ws = open_workspace(tiny_ckpt)
    rows = np.arange(100, 200)
    loader = ws.loader(ws.train, rows, device=CPU.device, batch_size=50)
    priority = torch.zeros(200, dtype=torch.float64)
    priority[150] = 1.0  # one row far from its target, the other 99 at theirs
    stream = PriorityStream(loader, priority, mix=0.1, seed=0)
    drawn = np.concatenate([batch[2].numpy() for _, batch in zip(range(40), stream, strict=False)])
    assert len(drawn) == 2000 and set(drawn) <= set(rows)
    share = float((drawn == 150).mean())
    assert 0.85 < share < 0.95  # 0.9 + 0.1/100 expected
    assert len(set(drawn)) > 60  # the mix share still reaches the others
    stream.record(torch.tensor([150, 120]), torch.tensor([0.0, 2.0]))
    assert stream.priority[150] == 1.0  # not applied before the check
    stream.refresh()
    assert stream.priority[150] == 0.0 and stream.priority[120] == 2.0 and not stream.pending


def test_original_outputs_reuse_what_the_caller_measured() -> None:
    """The original's outputs the workflow measured for the receipt (``task.before``) are
    used as they are; the rest (V here) is predicted, and F only when asked for."""
    from types import SimpleNamespace

    from unforget.methods.proxy_distill import original_outputs
    from unforget.training.evaluate import predict

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    rows = torch.utils.data.TensorDataset(
        torch.randn(10, 4), torch.randint(0, 3, (10,)), torch.arange(10)
    )
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    measured = predict(model, loader, precision=CPU)
    task = SimpleNamespace(
        model=model,
        precision=CPU,
        reference=loader,
        retain_eval=loader,
        forget_eval=loader,
        before={"forget": measured, "retain": measured},
    )
    got = original_outputs(task, forget=True)  # type: ignore[arg-type]
    assert got["forget"] is measured and got["retain"] is measured
    assert got["reference"] is not measured
    assert np.array_equal(got["reference"].logits, measured.logits)
    assert set(original_outputs(task, forget=False)) == {"reference", "retain"}  # type: ignore[arg-type]


def test_the_start_check_reads_the_first_rows_of_the_retain_sample_and_of_v(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """The checks' accuracies are read on the first ``check_accuracy_rows`` rows of the fixed
    retain sample and of V, and the start check, taken from what the workflow already
    measured over all of them, reads the same rows as every later check."""
    from unforget.io.manifest import read_manifest
    from unforget.training.evaluate import predict
    from unforget.workflows.unlearn import ApplyRequest, apply
    from unforget.workflows.workspace import open_workspace

    manifest = sample_dir / "forget_random10.txt"
    result = apply(
        ApplyRequest(
            ckpt=tiny_ckpt,
            manifest=manifest,
            options={"check_accuracy_rows": "100", "min_steps": "8", "least_steps": "8"},
            out=tmp_path / "u.safetensors",
        ),
        precision=CPU,
    )
    assert result.receipt is not None
    start = result.receipt.method_details["history"][0]
    ws = open_workspace(tiny_ckpt)
    deletion = ws.deletion(ws.forget_rows(read_manifest(manifest)))
    model = ws.load_model(None, CPU)
    for key, split, rows in (
        ("retain_acc", ws.train, deletion.retain_sample(np.random.default_rng(0))),
        ("reference_acc", ws.heldout, deletion.reference),
    ):
        first = predict(model, ws.loader(split, rows[:100], device=CPU.device), precision=CPU)
        assert len(rows) > 100 and start[key] == round(float(first.correct().mean()), 4)


def test_the_advised_budget_is_twice_the_default() -> None:
    """``apply``'s "remembered" warning and the audit's ``leak_below_margin`` step advise
    ``--set budget=…`` as twice the default's loop; the literal is pinned to 2 ×
    ``DEFAULT_BUDGET`` here, so it cannot drift again (it said 0.2 after the default moved to
    0.15)."""
    import inspect
    import re

    from unforget.cli import render
    from unforget.methods.proxy_distill import DEFAULT_BUDGET
    from unforget.workflows import audit_output

    for module in (render, audit_output):
        advised = re.findall(r"budget=([0-9.]+)", inspect.getsource(module))
        assert advised, module.__name__
        assert all(float(v) == pytest.approx(2 * DEFAULT_BUDGET) for v in advised)
