"""``unforget bench``: every method against exact retraining, from one run on one device.

For each forget setting and seed: train the original model with the project's training path,
retrain exactly on the retain set (method ``retrain``, the reference answer), run each method
through the same code path as ``unforget apply``, and measure accuracy on the forget set, a
retain sample and the evaluation half of the held-out split (never read by any method), the
membership attack (RMIA against the retrain runs as references, audit.md) and wall time. The gap
to retraining is the mean absolute difference over (forget acc, retain acc, test acc, MIA AUC);
the time ratio is method time / retrain time (each the receipt's ``seconds``: the method's own
run, the retrain's being its training), the call ratio the same for the whole ``apply`` call
(reading the data, the receipt's before/after measurements of forget, retain and held-out
rows, writing), both measured in this process.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unforget.config.spec import merge_spec, spec_layer_from_toml
from unforget.data import fmnist
from unforget.errors import InputError, UnforgetError, param
from unforget.io.fileio import atomic_write, atomic_write_json
from unforget.mia import attacks, metrics
from unforget.mia.signals import Signals, compute_signals
from unforget.runtime.device import Precision
from unforget.runtime.progress import ProgressFn, silent
from unforget.workflows.train import train_checkpoint
from unforget.workflows.unlearn import ApplyRequest, apply
from unforget.workflows.workspace import Workspace, open_workspace

Notice = Callable[[str], None]
SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data" / "fashion-mnist"
SAMPLE_TEXT = SAMPLE_DATA.parent / "text"


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to run. ``data`` is ``fashion-mnist`` (full set from the Debian package),
    ``sample`` (the shipped image subset), ``text`` (the shipped Rotten Tomatoes sample) or a
    folder in the project's data format; a folder with its own ``unforget.toml`` keeps that
    spec's model, columns and recipe."""

    data: str = "fashion-mnist"
    settings: tuple[str, ...] = ("random:0.01", "random:0.1", "random:0.3", "class:Sandal")
    methods: tuple[str, ...] = ("proxy-distill", "retrain", "finetune", "neggrad+", "scrub")
    seeds: int = 1
    out: Path = Path("bench")
    model: dict[str, Any] = field(
        default_factory=lambda: {"name": "mlp", "kwargs": {"hidden": [512, 256]}}
    )
    recipe: dict[str, Any] = field(
        default_factory=lambda: {"epochs": 20, "batch_size": 128, "lr": 1e-3}
    )
    # originals written with their cross-fitted proxies (train --proxies), so proxy-distill
    # runs as a user who followed the README's fast path would: nothing trained at apply time
    proxies: bool = False


@dataclass(frozen=True)
class _Applied:
    """One method's ``apply`` in a (setting, seed): what it wrote and what it cost."""

    out: Path
    receipt: Any
    peak_memory_mb: float
    call_seconds: float  # the whole apply call: reading, receipt measurements, writing


@dataclass(frozen=True)
class Run:
    """One method on one (setting, seed)."""

    setting: str
    seed: int
    method: str
    forget_acc: float
    retain_acc: float
    test_acc: float
    mia_auc: float
    mia_tpr_1pct: float
    loss_attack_acc: float
    seconds: float  # the method's own time (the receipt's seconds)
    samples_per_second: float | None
    peak_memory_mb: float
    stop_reason: str
    call_seconds: float = math.nan  # the whole apply call: reading, receipt measurements, writing
    gap: float = math.nan
    time_ratio: float = math.nan
    call_ratio: float = math.nan


def quick_config(out: Path, *, data: str = "sample", proxies: bool = False) -> BenchConfig:
    """A few minutes on 2 CPU cores: the shipped sample (or ``data``), one seed, a small model."""
    return BenchConfig(
        data=data,
        settings=("random:0.1", "class:Sandal"),
        methods=("proxy-distill", "retrain", "finetune"),
        seeds=1,
        out=out,
        model={"name": "mlp", "kwargs": {"hidden": [256]}},
        recipe={"epochs": 15, "batch_size": 64, "lr": 1e-3},
        proxies=proxies,
    )


def prepare_data(config: BenchConfig) -> Path:
    """The data folder: the Debian Fashion-MNIST converted once (cached in ``out``)."""
    if config.data in ("sample", "text"):
        folder = SAMPLE_DATA if config.data == "sample" else SAMPLE_TEXT
        if not (folder / "train.parquet").is_file():
            # An installed wheel has no sample_data/: it lives in the source checkout only.
            raise InputError(
                f"--data {config.data}: the shipped sample data is only in a source checkout "
                f"(not found at {folder}); pass --data PATH to a data folder (e.g. a clone's "
                "sample_data/fashion-mnist) or --data fashion-mnist (Debian package "
                "dataset-fashion-mnist)"
            )
        return folder
    if config.data != "fashion-mnist":
        path = Path(config.data)
        if not path.is_dir():
            raise InputError(
                f"--data {config.data!r} is neither 'fashion-mnist', 'sample' nor a data folder"
            )
        return path
    folder = config.out / "data" / "fashion-mnist"
    if not (folder / "heldout.parquet").is_file():
        fmnist.export(folder)
    return folder


def manifest_ids(ws: Workspace, setting: str, *, seed: int) -> list[str]:
    """IDs for ``random:FRACTION`` (seeded) or ``class:NAME`` (every training row of it)."""
    kind, _, value = setting.partition(":")
    ids = np.asarray(ws.train.ids, dtype=object)
    if kind == "random":
        fraction = float(value)
        if not 0 < fraction < 1:
            raise InputError(f"bench setting {setting!r}: fraction must be in (0, 1)")
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(ids, size=max(1, round(fraction * len(ids))), replace=False))
    if kind == "class":
        names = list(ws.spec.class_names or ws.info.class_names)
        if value not in names:
            raise InputError(f"bench setting {setting!r}: unknown class (classes: {names})")
        return sorted(ids[ws.train.labels == names.index(value)])
    raise InputError(f"bench setting {setting!r}: use random:FRACTION or class:NAME")


def run_bench(
    config: BenchConfig,
    *,
    precision: Precision,
    on_progress: ProgressFn = silent,
    on_notice: Notice = lambda _: None,
) -> dict[str, Any]:
    """Run everything, write ``results.json``, ``results.md`` and ``results.png``; return JSON."""
    if "retrain" not in config.methods:
        raise InputError(
            f"bench needs 'retrain' among {param('methods')}: it is the reference answer"
        )
    data = prepare_data(config)
    runs: list[Run] = []
    originals: dict[int, float] = {}
    for seed in range(config.seeds):
        original, seconds = _train_original(config, data, seed, precision, on_progress)
        originals[seed] = seconds
        with_proxies = " with its cross-fitted proxies" if config.proxies else ""
        on_notice(f"seed {seed}: original{with_proxies} trained in {seconds:.1f}s")
        for setting in config.settings:
            runs += _setting_runs(
                config, original, setting, seed, precision, on_progress, on_notice
            )
    summary = _summarise(runs, config)
    result = {
        "schema": "unforget.bench/1",
        "config": _config_json(config),
        "device": str(precision.device),
        "original_train_seconds": originals,
        "runs": [r.__dict__ for r in runs],
        "summary": summary,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config.out / "results.json", result)
    atomic_write(config.out / "results.md", markdown(summary).encode())
    _plot(summary, config.out / "results.png")
    return result


def _train_original(
    config: BenchConfig, data: Path, seed: int, precision: Precision, on_progress: ProgressFn
) -> tuple[Path, float]:
    base: dict[str, Any] = {"model": config.model, "recipe": config.recipe}
    if (data / "unforget.toml").is_file():
        # A data folder that ships its own run spec (e.g. the text sample) keeps its model,
        # columns and recipe: the benchmark must not retrain it with an image recipe.
        base = spec_layer_from_toml(data / "unforget.toml")
    spec = merge_spec(
        base,
        {
            "recipe": {"seed": seed},
            "data": {"path": str(data.resolve()), "reference_fraction": 0.5},
        },
    )
    out = config.out / f"seed{seed}" / "original.safetensors"
    start = time.perf_counter()
    train_checkpoint(
        spec,
        out=out,
        precision=precision,
        force=True,
        states=("proxy-distill",) if config.proxies else (),
        on_progress=on_progress,
    )
    return out, time.perf_counter() - start


def _setting_runs(
    config: BenchConfig,
    original: Path,
    setting: str,
    seed: int,
    precision: Precision,
    on_progress: ProgressFn,
    on_notice: Notice,
) -> list[Run]:
    ws = open_workspace(original)
    folder = original.parent / setting.replace(":", "-")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "forget.txt"
    manifest.write_text("\n".join(manifest_ids(ws, setting, seed=seed)) + "\n")
    outputs: dict[str, _Applied] = {}
    failures: dict[str, str] = {}
    for method in ["retrain", *[m for m in config.methods if m != "retrain"]]:
        _reset_peak(precision)
        request = ApplyRequest(
            ckpt=original,
            manifest=manifest,
            method=method,
            out=folder / f"{method}.safetensors",
            seed=seed,
            force=True,
        )
        start = time.perf_counter()
        try:
            result = apply(request, precision=precision, on_progress=on_progress)
        except UnforgetError as exc:
            if method == "retrain":
                raise
            # A method that stops on its guard rails is a result, not a reason to lose the run.
            failures[method] = str(exc)
            on_notice(f"seed {seed} {setting} {method}: FAILED ({exc})")
            continue
        assert result.receipt is not None
        call = time.perf_counter() - start
        outputs[method] = _Applied(result.out, result.receipt, _peak_mb(precision), call)
        on_notice(
            f"seed {seed} {setting} {method}: {result.receipt.seconds:.1f}s, "
            f"stop {result.receipt.stop_reason}"
        )
    runs = _measure(ws, manifest, outputs, setting, seed, precision)
    return runs + [_failed(setting, seed, method, reason) for method, reason in failures.items()]


def _failed(setting: str, seed: int, method: str, reason: str) -> Run:
    nan = math.nan
    return Run(
        setting=setting,
        seed=seed,
        method=method,
        forget_acc=nan,
        retain_acc=nan,
        test_acc=nan,
        mia_auc=nan,
        mia_tpr_1pct=nan,
        loss_attack_acc=nan,
        seconds=nan,
        samples_per_second=None,
        peak_memory_mb=nan,
        stop_reason=f"failed: {reason}",
    )


def _measure(
    ws: Workspace,
    manifest: Path,
    outputs: dict[str, _Applied],
    setting: str,
    seed: int,
    precision: Precision,
) -> list[Run]:
    from unforget.io.manifest import read_manifest

    deletion = ws.deletion(ws.forget_rows(read_manifest(manifest)))
    forget, test = deletion.forget, deletion.evidence
    rng = np.random.default_rng(seed)
    retain_sample = deletion.retain_sample(rng)
    classes = np.unique(ws.train.labels[forget])
    test_mia = test[np.isin(ws.heldout.labels[test], classes)]
    signals = {}
    for method, applied in outputs.items():
        model = ws.load_model(applied.out, precision)
        signals[method] = {
            name: _signals(ws, model, split, rows, precision)
            for name, split, rows in (
                ("forget", ws.train, forget),
                ("retain", ws.train, retain_sample),
                ("test", ws.heldout, test),
                ("mia", ws.heldout, test_mia),
            )
        }
    p_ref = np.r_[signals["retrain"]["forget"].p, signals["retrain"]["mia"].p][None]
    is_forget = np.r_[np.ones(len(forget), bool), np.zeros(len(test_mia), bool)]
    runs = []
    for method, applied in outputs.items():
        receipt = applied.receipt
        s = signals[method]
        p = np.r_[s["forget"].p, s["mia"].p]
        scores = attacks.rmia_offline(p, p_ref, a=0.3)
        auc = 0.5 if method == "retrain" else metrics.auc(scores[is_forget], scores[~is_forget])
        tpr = metrics.tpr_at_fpr(scores[is_forget], scores[~is_forget], fpr=0.01).tpr
        details = receipt.method_details or {}
        runs.append(
            Run(
                setting=setting,
                seed=seed,
                method=method,
                forget_acc=float(s["forget"].correct.mean()),
                retain_acc=float(s["retain"].correct.mean()),
                test_acc=float(s["test"].correct.mean()),
                mia_auc=auc,
                mia_tpr_1pct=0.01 if method == "retrain" else tpr,
                loss_attack_acc=attacks.logistic_regression_mia_accuracy(
                    s["forget"].loss, s["mia"].loss, rng=np.random.default_rng(seed)
                ),
                seconds=receipt.seconds,
                samples_per_second=details.get("step_samples_per_second"),
                peak_memory_mb=applied.peak_memory_mb,
                stop_reason=receipt.stop_reason,
                call_seconds=applied.call_seconds,
            )
        )
    return _with_gaps(runs)


def _with_gaps(runs: list[Run]) -> list[Run]:
    """Gap to retrain: mean |Δ| over forget/retain/test accuracy and MIA AUC; time ratios."""
    ref = next(r for r in runs if r.method == "retrain")
    out = []
    for r in runs:
        gap = np.mean(
            [
                abs(r.forget_acc - ref.forget_acc),
                abs(r.retain_acc - ref.retain_acc),
                abs(r.test_acc - ref.test_acc),
                abs(r.mia_auc - ref.mia_auc),
            ]
        )
        out.append(
            Run(
                **{
                    **r.__dict__,
                    "gap": float(gap),
                    "time_ratio": _ratio(r.seconds, ref.seconds),
                    "call_ratio": _ratio(r.call_seconds, ref.call_seconds),
                }
            )
        )
    return out


def _ratio(seconds: float, retrain_seconds: float) -> float:
    return seconds / retrain_seconds if retrain_seconds else math.nan


def _signals(
    ws: Workspace, model: Any, split: Any, rows: np.ndarray, precision: Precision
) -> Signals:
    return compute_signals(
        model, ws.loader(split, rows, device=precision.device), precision=precision
    )


def _reset_peak(precision: Precision) -> None:
    if precision.device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(precision.device)


def _peak_mb(precision: Precision) -> float:
    """Peak CUDA memory of the run; on CPU the process's peak RSS so far (an upper bound)."""
    if precision.device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(precision.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_COLUMNS = (
    "forget_acc",
    "retain_acc",
    "test_acc",
    "mia_auc",
    "mia_tpr_1pct",
    "loss_attack_acc",
    "gap",
    "time_ratio",
    "call_ratio",
    "seconds",
)


def _summarise(runs: Sequence[Run], config: BenchConfig) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (setting, method)."""
    rows = []
    for setting in config.settings:
        for method in ["retrain", *[m for m in config.methods if m != "retrain"]]:
            group = [r for r in runs if r.setting == setting and r.method == method]
            row: dict[str, Any] = {"setting": setting, "method": method, "n": len(group)}
            for column in _COLUMNS:
                values = np.asarray([getattr(r, column) for r in group], dtype=float)
                row[column] = float(values.mean())
                row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            throughput = [r.samples_per_second for r in group if r.samples_per_second]
            row["samples_per_second"] = float(np.mean(throughput)) if throughput else None
            rows.append(row)
    return rows


def markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The results table (mean ± std over seeds; accuracies and gaps in points)."""
    head = (
        "| setting | method | forget acc | retain acc | test acc | MIA AUC | TPR@1%FPR | "
        "LR-MIA acc | gap to retrain | time / retrain | call / retrain |"
    )
    lines = [head, "|" + "---|" * 11]

    def pm(row: dict[str, Any], key: str, scale: float = 100, digits: int = 1) -> str:
        std = f" ± {row[key + '_std'] * scale:.{digits}f}" if row["n"] > 1 else ""
        return f"{row[key] * scale:.{digits}f}{std}"

    for row in summary:
        lines.append(
            f"| {row['setting']} | {row['method']} | {pm(row, 'forget_acc')} | "
            f"{pm(row, 'retain_acc')} | {pm(row, 'test_acc')} | {pm(row, 'mia_auc', 1, 3)} | "
            f"{pm(row, 'mia_tpr_1pct')} | {pm(row, 'loss_attack_acc')} | {pm(row, 'gap')} | "
            f"{pm(row, 'time_ratio', 1, 3)} | {pm(row, 'call_ratio', 1, 3)} |"
        )
    return "\n".join(lines) + "\n"


def _plot(summary: Sequence[dict[str, Any]], path: Path) -> None:
    """Gap to retrain vs time ratio, one marker per forget setting, one colour per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    import io

    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted({r["method"] for r in summary})
    markers = dict(zip(sorted({r["setting"] for r in summary}), "os^Dvx", strict=False))
    for i, method in enumerate(methods):
        for r in (r for r in summary if r["method"] == method and r["method"] != "retrain"):
            ax.scatter(
                r["time_ratio"],
                100 * r["gap"],
                color=f"C{i % 10}",
                marker=markers[r["setting"]],
                label=method,
            )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    ax.set(
        xscale="log",
        xlabel="wall time / retrain time",
        ylabel="gap to retrain (points)",
        title="markers: " + ", ".join(f"{m} {s}" for s, m in markers.items()),
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def _config_json(config: BenchConfig) -> dict[str, Any]:
    return {
        **config.__dict__,
        "out": str(config.out),
        "settings": list(config.settings),
        "methods": list(config.methods),
    }
