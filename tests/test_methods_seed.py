"""The seed methods pgu, ltu and lur: the shared contract plus each method's own maths.

Contract (each method, real ``apply`` pipeline, tiny MLP, random 10 % forget manifest): the run
finishes, losses are finite, weights change, forget accuracy falls, retain-sample and held-out
accuracy stay within ``TOLERANCE`` of where they started, the receipt names the method and its
resolved options, and the output loads into the architecture.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Sized
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unforget.config.options import as_plain
from unforget.data.loaders import make_loader, source
from unforget.errors import CheckpointError, InputError, OutputExistsError
from unforget.io import checkpoint as ckpt_io
from unforget.io.manifest import read_manifest
from unforget.methods import METHODS, get_method, make_config
from unforget.methods import pgu_stats as stats_io
from unforget.methods.base import Loader, UnlearnTask
from unforget.methods.common import reference_target
from unforget.methods.ltu import harmonize, margins, membership_gap
from unforget.methods.lur import look_ahead, lur_objective
from unforget.methods.pgu import (
    retain_statistics,
    retained_bases,
    sidecar_update,
)
from unforget.models import build_model
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows.unlearn import ApplyRequest, ApplyResult, apply
from unforget.workflows.workspace import Workspace, open_workspace

SEED_METHODS = tuple(m for m in METHODS if m in {"pgu", "ltu", "lur"})  # the seed methods
TOLERANCE = 0.03  # absolute accuracy: retain sample and held-out may fall at most 3 points
# |δC_ij| ≤ Σ_n |δ(x_i x_j)| ≲ 2·ε·Σ_n |x_i||x_j| ≤ 2·ε·max_k C_kk with ε ≈ 2e-6, the relative
# error of a float32 activation after a 784-term dot product; so 1e-5 of the largest entry.
STATS_RTOL = 1e-5
PRECISION = precision_for(resolve_device("cpu"))
ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "sample_data" / "forget_random10.txt"
DATA = ROOT / "sample_data" / "fashion-mnist"

Applied = Callable[[str], ApplyResult]


@pytest.fixture(scope="module")
def applied(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Applied:
    """Run ``apply`` once per method (default options) and share the result in this module."""
    results: dict[str, ApplyResult] = {}
    folder = tmp_path_factory.mktemp("seed")

    def run(method: str) -> ApplyResult:
        if method not in results:
            request = ApplyRequest(
                ckpt=tiny_ckpt,
                manifest=MANIFEST,
                method=method,
                out=folder / f"{method}.safetensors",
            )
            results[method] = apply(request, precision=PRECISION)
        return results[method]

    return run


@pytest.mark.parametrize("method", SEED_METHODS)
def test_contract(method: str, applied: Applied, tiny_ckpt: Path) -> None:
    result = applied(method)
    receipt = result.receipt
    assert receipt is not None
    before, after = receipt.before, receipt.after
    assert receipt.steps > 0 and receipt.stop_reason
    assert math.isfinite(after.forget.loss) and math.isfinite(after.heldout.loss)
    assert after.forget.accuracy < before.forget.accuracy
    assert after.retain.accuracy >= before.retain.accuracy - TOLERANCE
    assert after.heldout.accuracy >= before.heldout.accuracy - TOLERANCE
    assert receipt.provenance.method == method
    method_obj = get_method(method)
    assert receipt.provenance.options == as_plain(method_obj.Config())
    json.dumps(receipt.method_details)  # recorded verbatim in the receipt: JSON-ready
    assert receipt.method_details["history"][0]["epoch"] == 0

    original = ckpt_io.load_checkpoint(tiny_ckpt)
    output = ckpt_io.load_checkpoint(result.out)
    assert all(torch.isfinite(t).all() for t in output.tensors.values())
    assert any(not torch.equal(output.tensors[k], original.tensors[k]) for k in original.tensors)
    ws = open_workspace(result.out)
    model = build_model(ws.spec.model, input_shape=ws.info.shape, num_classes=ws.info.num_classes)
    ckpt_io.load_into(model, output)


@pytest.mark.parametrize("method", SEED_METHODS)
def test_config_is_validated(method: str) -> None:
    method_obj = get_method(method)
    assert dataclasses.is_dataclass(method_obj.Config)
    with pytest.raises(InputError, match="budget"):
        make_config(method_obj, {"budget": "-1"})
    with pytest.raises(InputError, match="max_reference_drop"):
        make_config(method_obj, {"max_reference_drop": "0"})


def test_stop_target_is_class_aware() -> None:
    """Target = reference accuracy per forget class, weighted by the forget set's class mix,
    with classes removed whole at 0; ``kept`` = reference accuracy on the classes that stay."""
    logits = np.eye(3)[[0, 0, 1, 1, 2, 0]]  # predictions 0 0 1 1 2 0
    labels = np.array([0, 0, 1, 1, 2, 2])  # class 0: 2/2, class 1: 2/2, class 2: 1/2 right
    target, kept = reference_target(np.array([0, 2, 2, 2]), logits, labels, removed=())
    assert target == pytest.approx(0.25 * 1.0 + 0.75 * 0.5)
    assert kept == pytest.approx(5 / 6)
    target, kept = reference_target(np.array([2, 2]), logits, labels, removed=(2,))
    assert target == 0.0 and kept == 1.0


# --- PGU -------------------------------------------------------------------------------------


def _workspace_model(ckpt: Path) -> tuple[nn.Module, Workspace]:
    ws = open_workspace(ckpt, flags={"data.path": str(DATA)})
    model = build_model(ws.spec.model, input_shape=ws.info.shape, num_classes=ws.info.num_classes)
    ckpt_io.load_into(model, ws.checkpoint)
    return model, ws


def _loader(ws: Workspace, rows: np.ndarray, *, shuffle: bool = False) -> Loader:
    src = source(ws.train, rows, spec=ws.spec.data, info=ws.info)
    return make_loader(src, batch_size=256, shuffle=shuffle, seed=0, device=PRECISION.device)


def _task(ckpt: Path) -> UnlearnTask:
    """A hand-built task for ``ckpt`` and the random-10 % manifest (public pieces only)."""
    model, ws = _workspace_model(ckpt)
    forget = ws.forget_rows(read_manifest(MANIFEST))
    retain = ws.retain_rows(forget)
    statistics = stats_io.sidecar_path(ckpt)
    return UnlearnTask(
        model=model,
        forget=_loader(ws, forget, shuffle=True),
        retain=_loader(ws, retain, shuffle=True),
        reference=None,
        retain_eval=_loader(ws, retain[:512]),
        forget_eval=_loader(ws, forget),
        precision=PRECISION,
        spec=ws.spec,
        seed=0,
        n_forget=len(forget),
        n_retain=len(retain),
        saved_state=statistics if statistics.is_file() else None,
    )


def test_pgu_update_is_orthogonal_to_the_retained_subspace(
    applied: Applied, tiny_ckpt: Path
) -> None:
    """Every layer's total update ΔW (augmented with the bias column) satisfies
    ‖ΔW U_k‖ / ‖ΔW‖ < 1e-4 for the retained basis U_k of C^R at the default ε = 0.95.

    Each SGD step is G(I − P) exactly, so the only departure is fp32 rounding of the weights
    (measured ~6e-6 on the tiny MLP).
    """
    result = applied("pgu")
    task = _task(tiny_ckpt)
    retain_stats, _ = retain_statistics(task)
    bases = retained_bases(retain_stats, threshold=0.95, threshold_step=0.0)
    before = ckpt_io.load_checkpoint(tiny_ckpt).tensors
    after = ckpt_io.load_checkpoint(result.out).tensors
    assert bases
    for name, basis in bases.items():
        assert 0 < basis.shape[1] < basis.shape[0]
        delta_w = after[f"{name}.weight"].double() - before[f"{name}.weight"].double()
        delta_b = after[f"{name}.bias"].double() - before[f"{name}.bias"].double()
        delta = torch.cat([delta_w.reshape(len(delta_w), -1), delta_b[:, None]], dim=1)
        assert delta.norm() > 0
        assert (delta @ basis).norm() / delta.norm() < 1e-4, name


def test_statistics_subtraction_equals_retain_statistics(tiny_ckpt: Path) -> None:
    """C^full − C^F == C^R measured on R directly (float64 sums of float32 activations).

    The layer inputs x come from float32 forward passes whose last bits depend on the batch a
    row is in and on the thread count (BLAS blocking), so equality holds to float32 precision,
    not float64: see :data:`STATS_RTOL`."""
    model, ws = _workspace_model(tiny_ckpt)
    forget = ws.forget_rows(read_manifest(MANIFEST))
    retain = ws.retain_rows(forget)
    everything = np.arange(len(ws.train))
    full = stats_io.compute_statistics(model, _loader(ws, everything, shuffle=True), PRECISION)
    c_forget = stats_io.compute_statistics(model, _loader(ws, forget), PRECISION)
    c_retain = stats_io.compute_statistics(model, _loader(ws, retain), PRECISION)
    difference = stats_io.subtract(full, c_forget)
    assert set(difference) == set(c_retain) == {"net.1", "net.3", stats_io.SAMPLES_KEY}
    assert stats_io.sample_count(difference) == len(retain)
    for name in ("net.1", "net.3"):
        assert difference[name].dtype == torch.float64
        dim = stats_io.input_dim(dict(model.named_modules())[name])
        assert difference[name].shape == (dim, dim)
        scale = float(c_retain[name].abs().max())
        torch.testing.assert_close(
            difference[name], c_retain[name], rtol=STATS_RTOL, atol=STATS_RTOL * scale
        )
    # The bias coordinate counts inputs: C[-1, -1] = Σ 1·1 = number of input vectors.
    assert float(c_retain["net.1"][-1, -1]) == len(retain)
    with pytest.raises(ValueError, match="cannot remove"):
        stats_io.subtract(c_forget, full)


def test_statistics_of_a_convolution_use_its_patches() -> None:
    """Conv2d: C = Σ over unfolded patches (c_in·k·k, + bias) at the layer's own stride."""
    conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1)
    x = torch.randn(4, 2, 9, 9)
    loader = [(x, torch.zeros(4, dtype=torch.int64), torch.arange(4))]
    stats = stats_io.compute_statistics(nn.Sequential(conv), loader, PRECISION)  # type: ignore[arg-type]
    patches = nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 18)
    rows = torch.cat([patches, torch.ones(len(patches), 1)], dim=1).double()
    torch.testing.assert_close(stats["0"], rows.T @ rows)
    assert stats_io.sample_count(stats) == 4


def test_sidecar_round_trip(tmp_path: Path) -> None:
    stats = {
        "net.1": torch.randn(5, 5, dtype=torch.float64),
        stats_io.SAMPLES_KEY: torch.tensor(7, dtype=torch.int64),
    }
    path = tmp_path / "m.pgu.safetensors"
    stats_io.save_statistics(path, stats, metadata={"unforget.checkpoint_sha256": "abc"})
    loaded = stats_io.load_statistics(path)
    assert set(loaded) == set(stats)
    assert torch.equal(loaded["net.1"], stats["net.1"]) and stats_io.sample_count(loaded) == 7
    meta = ckpt_io.load_checkpoint(path).meta_json(stats_io.META_KEY)
    assert meta == {"version": 1, "samples": 7, "layers": {"net.1": 5}}
    with pytest.raises(OutputExistsError):
        stats_io.save_statistics(path, stats, metadata={})
    plain = tmp_path / "plain.safetensors"
    ckpt_io.save_checkpoint(plain, {"w": torch.zeros(2)}, metadata={})
    with pytest.raises(CheckpointError, match="not a PGU statistics sidecar"):
        stats_io.load_statistics(plain)
    assert stats_io.sidecar_path(tmp_path / "m.safetensors") == path


@pytest.fixture
def ckpt_with_sidecar(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint with the sidecar ``unforget train --pgu-stats`` writes."""
    ckpt = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_ckpt, ckpt)
    model, ws = _workspace_model(ckpt)
    everything = np.arange(len(ws.train))
    full = stats_io.compute_statistics(model, _loader(ws, everything), PRECISION)
    stats_io.save_statistics(stats_io.sidecar_path(ckpt), full, metadata={})
    return ckpt


def test_pgu_uses_the_sidecar_without_reading_the_retain_set(
    ckpt_with_sidecar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = stats_io.compute_statistics

    def spy(model: nn.Module, loader: torch.utils.data.DataLoader, precision: object) -> dict:
        seen.append(len(cast(Sized, loader.dataset)))
        return real(model, loader, precision)  # type: ignore[arg-type]

    monkeypatch.setattr(stats_io, "compute_statistics", spy)
    monkeypatch.setattr("unforget.methods.pgu.compute_statistics", spy)
    request = ApplyRequest(
        ckpt=ckpt_with_sidecar,
        manifest=MANIFEST,
        method="pgu",
        out=tmp_path / "out.safetensors",
        flags={"data.path": str(DATA)},
    )
    receipt = apply(request, precision=PRECISION).receipt
    assert receipt is not None
    assert receipt.method_details["statistics"] == "sidecar"
    # Only the forget set is read (once by PGU, once for the next sidecar), never the 5,400
    # retain rows.
    assert seen and all(n == 600 for n in seen)
    assert receipt.after.forget.accuracy < receipt.before.forget.accuracy
    # The method's saved state follows its checkpoint: C^R for the output, tied to its bytes.
    carried = stats_io.sidecar_path(request.out)
    assert stats_io.sample_count(stats_io.load_statistics(carried)) == 5400
    meta = ckpt_io.load_checkpoint(carried).metadata
    assert meta["unforget.checkpoint_sha256"] == receipt.output_sha256
    # Another method writing the same output never leaves that state beside other weights.
    other = dataclasses.replace(request, method="finetune", options={"epochs": "0.2"}, force=True)
    assert apply(other, precision=PRECISION).receipt is not None
    assert not carried.exists() and stats_io.sidecar_path(ckpt_with_sidecar).is_file()


def test_sidecar_update_describes_the_retain_set(ckpt_with_sidecar: Path) -> None:
    """The next sidecar (C^full − C^F, weights before unlearning) equals C^R measured on R, and
    carries |R| samples, so the next deletion's check (count == |R'| + |F'|) holds."""
    task = _task(ckpt_with_sidecar)
    updated = sidecar_update(task)
    assert updated is not None
    direct = stats_io.compute_statistics(task.model, task.retain, PRECISION)
    assert stats_io.sample_count(updated) == task.n_retain
    for name in ("net.1", "net.3"):
        scale = float(direct[name].abs().max())
        torch.testing.assert_close(
            updated[name], direct[name], rtol=STATS_RTOL, atol=STATS_RTOL * scale
        )


def test_stale_sidecar_falls_back_to_computed(ckpt_with_sidecar: Path) -> None:
    path = stats_io.sidecar_path(ckpt_with_sidecar)
    stale = stats_io.load_statistics(path)
    stale[stats_io.SAMPLES_KEY] = torch.tensor(5999, dtype=torch.int64)
    stats_io.save_statistics(path, stale, metadata={}, force=True)
    task = _task(ckpt_with_sidecar)
    assert sidecar_update(task) is None
    _, details = retain_statistics(task)
    assert details["statistics"] == "computed"
    assert "stale sidecar" in details["statistics_note"]


# --- LTU -------------------------------------------------------------------------------------

vectors = st.integers(min_value=1, max_value=24).flatmap(
    lambda n: st.tuples(
        *[st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=n, max_size=n)] * 2
    )
)


@settings(max_examples=300, deadline=None)
@given(vectors)
def test_harmonised_gradients_are_never_negatively_aligned(
    pair: tuple[list[float], list[float]],
) -> None:
    """After harmonisation g_r'·g_f ≥ 0, g_f'·g_r ≥ 0, and the summed update has a non-negative
    inner product with both original gradients (within fp32 rounding of the dot products)."""
    g_r, g_f = (torch.tensor(v, dtype=torch.float32) for v in pair)
    r, f = harmonize(g_r, g_f)
    tol = 1e-4 * float(g_r.double().norm() * g_f.double().norm()) + 1e-6
    total = (r + f).double()
    assert float(r.double() @ g_f.double()) >= -tol
    assert float(f.double() @ g_r.double()) >= -tol
    assert float(total @ g_r.double()) >= -tol
    assert float(total @ g_f.double()) >= -tol
    if float(g_r.double() @ g_f.double()) >= 0:
        assert torch.equal(r, g_r) and torch.equal(f, g_f)


def test_harmonize_worked_example() -> None:
    """g_r = (1, 0), g_f = (−1, 1): conflict (dot −1); g_f' = (0, 1), g_r' = (½, ½)."""
    r, f = harmonize(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(f, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(r, torch.tensor([0.5, 0.5]))


def test_margin_signal() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(margins(logits, y), torch.tensor([2.0, -2.0]))
    reference = torch.sort(torch.randn(1000)).values
    matched = torch.quantile(reference, (torch.arange(8) + 0.5) / 8)
    assert float(membership_gap(matched.flip(0), reference, delta=1.0)) < 1e-12
    shifted = membership_gap(matched + 3.0, reference, delta=1.0)
    assert float(shifted) == pytest.approx(2.5)  # Huber(3) with δ = 1


# --- LUR -------------------------------------------------------------------------------------


def _tiny_problem() -> tuple[nn.Module, dict[str, nn.Parameter], tuple, tuple]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    params = dict(model.named_parameters())
    forget = (torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    retain = (torch.randn(8, 4, dtype=torch.float64), torch.tensor([2, 2, 1, 0, 1, 0, 2, 1]))
    return model, params, forget, retain


def test_look_ahead_first_order_identity() -> None:
    """L_R(θ − η∇L_F) = L_R(θ) − η ∇L_R·∇L_F + O(η²): the error shrinks 4× when η halves."""
    model, params, forget, retain = _tiny_problem()
    ce = nn.functional.cross_entropy
    loss_f = ce(model(forget[0]), forget[1])
    loss_r = ce(model(retain[0]), retain[1])
    g_f = torch.autograd.grad(loss_f, list(params.values()), retain_graph=True)
    g_r = torch.autograd.grad(loss_r, list(params.values()))
    inner = sum(float((a * b).sum()) for a, b in zip(g_r, g_f, strict=True))
    errors = []
    for eta in (1e-2, 5e-3):
        fast = look_ahead(model, params, loss_f, step=eta, create_graph=False)
        ahead = float(ce(torch.func.functional_call(model, fast, (retain[0],)), retain[1]).detach())
        errors.append(abs(ahead - (float(loss_r.detach()) - eta * inner)))
    assert errors[0] < 0.1 * abs(1e-2 * inner)
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)


def test_lur_gradient_is_exact_second_order() -> None:
    """∇ total (second order, through θ') matches central finite differences of total(θ);
    the first-order variant does not (it drops the Hessian-vector terms, here ~3e-2).

    The losses are float32 (logits are cast for mixed-precision safety), so the step is 1e-3
    and the tolerance 5e-4 (rounding ~1e-4, truncation ~1e-6)."""
    model, params, forget, retain = _tiny_problem()

    def total(create_graph: bool) -> torch.Tensor:
        value, _, _ = lur_objective(
            model,
            params,
            forget,
            retain,
            inner_lr=0.5,
            retain_weight=1.0,
            create_graph=create_graph,
        )
        return value

    exact = torch.autograd.grad(total(True), list(params.values()))
    first = torch.autograd.grad(total(False), list(params.values()))
    numeric = []
    with torch.no_grad():
        for p in params.values():
            grad = torch.zeros_like(p)
            for i in range(p.numel()):
                flat = p.view(-1)
                flat[i] += 1e-3
                with torch.enable_grad():
                    up = float(total(False).detach())
                flat[i] -= 2e-3
                with torch.enable_grad():
                    down = float(total(False).detach())
                flat[i] += 1e-3
                grad.view(-1)[i] = (up - down) / 2e-3
            numeric.append(grad)
    for e, n in zip(exact, numeric, strict=True):
        torch.testing.assert_close(e, n, rtol=0.0, atol=5e-4)
    assert max(float((f - n).abs().max()) for f, n in zip(first, numeric, strict=True)) > 5e-3
