"""Command-line interface. The only module that prints, and the only error boundary.

Exit codes (stable): 0 success / audit PASS, 1 runtime failure, 2 bad usage or bad input,
3 audit FAIL-LEAK, 4 audit FAIL-OVER, 5 audit INCONCLUSIVE. With ``--json`` exactly one JSON
object goes to stdout; everything for humans (tables, progress bars) goes to stderr, and
progress bars only appear when stderr is a terminal. Nothing here ever prompts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from unforget.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, UnforgetError

app = typer.Typer(
    name="unforget",
    help="Make a trained PyTorch model forget chosen training samples, audit it, keep a record.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout only.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No human output on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
Compile = Annotated[
    bool, typer.Option("--compile", help="torch.compile the model for training (CUDA only).")
]
Config = Annotated[
    Path | None, typer.Option("--config", help="TOML run spec ([model], [data], [recipe]).")
]
LedgerKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--ledger-key",
        help="Ledger key file (default: $UNFORGET_LEDGER_KEY_FILE, else "
        "~/.config/unforget/ledger.key, created by the first deletion).",
    ),
]
SET_HELP = (
    "KEY=VALUE, repeatable. Keys under model., data. or recipe. override the run spec "
    "(e.g. data.input_columns=text); in apply any other key (or method.KEY) sets an option "
    "of the method (see `unforget methods`)."
)
Sets = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)]
CkptArg = Annotated[
    Path | None,
    typer.Argument(metavar="[CKPT]", help="Checkpoint; same as --ckpt (kept for older scripts)."),
]
SPEC_SECTIONS = ("model.", "data.", "recipe.")


def _version(value: bool) -> None:
    if value:
        from unforget import __version__

        sys.stdout.write(f"unforget {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Make a trained PyTorch model forget chosen training samples, audit it, keep a record."""


def _console() -> Any:
    from rich.console import Console

    from unforget.runtime.distributed import is_writer

    if not is_writer():  # under torchrun only rank 0 talks; errors still reach stderr
        import os

        return Console(file=open(os.devnull, "w"), highlight=False)
    return Console(stderr=True, highlight=False)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[Any], None]]:
    """A rich progress bar on stderr when it is a terminal; a plain line every 30 s when it is
    not (logs, CI); nothing when disabled (--quiet, --json)."""
    if not enabled:
        yield lambda tick: None
        return
    if not sys.stderr.isatty():
        from unforget.runtime.progress import PlainProgress

        yield PlainProgress(sys.stderr.write)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console(), transient=True) as bar:

        def update(tick: Any) -> None:
            if tick.task not in tasks:
                tasks[tick.task] = bar.add_task(tick.task, total=tick.total, info="")
            info = tick.numbers()
            bar.update(tasks[tick.task], completed=tick.completed, total=tick.total, info=info)

        yield update


def _emit_json(obj: Any) -> None:
    from unforget.runtime.distributed import is_writer

    if not is_writer():
        return
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def _precision(device: str, amp: bool = True, compile: bool = False) -> Any:
    """The device's precision; under torchrun also joins the process group (one GPU per
    local rank on CUDA)."""
    from unforget.runtime.device import precision_for, resolve_device
    from unforget.runtime.distributed import init_from_env

    return precision_for(init_from_env(resolve_device(device)), amp=amp, compile=compile)


def _flags(sets: list[str] | None, **named: Any) -> dict[str, Any]:
    """Dotted spec overrides from named flags and ``--set``; ``None`` means not given.

    Raises:
        InputError: a ``--set`` key that is not a run-spec key (commands without a method).
    """
    spec, method = _split_sets(sets)
    if method:
        from unforget.errors import InputError

        raise InputError(
            f"--set {', '.join(sorted(method))}: not a run-spec key; use "
            "model.KEY, data.KEY or recipe.KEY (method options only exist in apply)"
        )
    out = {k: v for k, v in named.items() if v is not None}
    out.update(spec)
    return out


def _split_sets(sets: list[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """``--set`` items as (run-spec overrides, method options): the one meaning of ``--set``."""
    from unforget.config.options import parse_assignments

    spec: dict[str, str] = {}
    method: dict[str, str] = {}
    for key, value in parse_assignments(sets or []).items():
        if key.startswith(SPEC_SECTIONS):
            spec[key] = value
        else:
            method[key.removeprefix("method.")] = value
    return spec, method


def _one_ckpt(positional: Path | None, option: Path | None) -> Path:
    """The checkpoint given as ``--ckpt`` or positionally (one of them, or both the same)."""
    from unforget.errors import InputError

    if positional is not None and option is not None and positional != option:
        raise InputError(f"two checkpoints given ({positional} and --ckpt {option}); give one")
    ckpt = option or positional
    if ckpt is None:
        raise InputError("no checkpoint given: pass --ckpt PATH")
    return ckpt


@app.command(
    epilog="Examples:\n\n  unforget train --data sample_data/fashion-mnist --model mlp"
    " --out model.safetensors"
    "\n\n  unforget train --like model.safetensors --exclude ids.txt --out retrained.safetensors",
)
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    data: Annotated[str | None, typer.Option("--data", help="Data folder.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="mlp, cnn, resnet18, text, or pkg.module:factory.")
    ] = None,
    like: Annotated[
        Path | None,
        typer.Option("--like", help="Reuse this checkpoint's spec (model, data, recipe)."),
    ] = None,
    exclude: Annotated[
        Path | None,
        typer.Option("--exclude", help="Manifest of IDs to leave out (exact retraining)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    config: Config = None,
    sets: Sets = None,
    device: Device = "auto",
    compile_model: Compile = False,
    pgu_stats: Annotated[
        bool,
        typer.Option(
            "--pgu-stats",
            help="Also write <out stem>.pgu.safetensors, the layer statistics the pgu method "
            "reads instead of the retain set (one more pass over the training data).",
        ),
    ] = False,
    proxies: Annotated[
        bool,
        typer.Option(
            "--proxies",
            help="Also write <out stem>.proxies.safetensors: two cross-fitted proxies that make "
            "later proxy-distill deletions several times faster (about half a training run "
            "more now).",
        ),
    ] = False,
    force: Force = False,
    ledger_key: LedgerKeyFile = None,
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a model from a spec and write a safetensors checkpoint with the spec embedded."""
    from unforget.cli.render import print_train
    from unforget.io.checkpoint import load_checkpoint
    from unforget.io.ledger import using_key_file
    from unforget.io.manifest import read_manifest
    from unforget.io.paths import check_train_paths
    from unforget.workflows.train import train_checkpoint
    from unforget.workflows.workspace import resolve_spec

    flags = _flags(
        sets,
        **{
            "data.path": data,
            "model.name": model,
            "recipe.epochs": epochs,
            "recipe.lr": lr,
            "recipe.batch_size": batch_size,
            "recipe.seed": seed,
        },
    )
    base = load_checkpoint(like) if like else None
    spec, allow_plugin = resolve_spec(base, config=config, flags=flags)
    spec = spec.replace(train_fingerprint=None)
    check_train_paths(out, like=like, exclude=exclude, config=config, spec=spec, force=force)
    manifest = read_manifest(exclude) if exclude else None
    with _progress(not quiet and not as_json) as tick, using_key_file(ledger_key):
        report = train_checkpoint(
            spec,
            out=out,
            precision=_precision(device, compile=compile_model),
            force=force,
            allow_plugin=allow_plugin,
            exclude=manifest,
            states=_states(pgu_stats=pgu_stats, proxies=proxies),
            on_progress=tick,
        )
    if as_json:
        _emit_json(report_json(report))
    elif not quiet:
        print_train(_console(), report)
    _key_notice(report.ledger_key_created, quiet=quiet or as_json)


@app.command(
    epilog="Example:\n\n  unforget prepare --ckpt model.safetensors --proxies --json",
)
def prepare(
    ckpt_arg: CkptArg = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Checkpoint (.safetensors).")] = None,
    proxies: Annotated[
        bool,
        typer.Option(
            "--proxies",
            help="Write <stem>.proxies.safetensors, what train --proxies writes.",
        ),
    ] = False,
    pgu_stats: Annotated[
        bool,
        typer.Option(
            "--pgu-stats", help="Write <stem>.pgu.safetensors, what train --pgu-stats writes."
        ),
    ] = False,
    device: Device = "auto",
    force: Force = False,
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write the saved states of methods beside an existing checkpoint (no new weights).

    For checkpoints trained without --proxies / --pgu-stats: the states are measured on the
    rows the weights stand for (training rows minus every deletion in the ledger).
    """
    from unforget.errors import InputError
    from unforget.workflows.train import add_states

    ckpt = _one_ckpt(ckpt_arg, ckpt)
    states = _states(pgu_stats=pgu_stats, proxies=proxies)
    if not states:
        raise InputError("name what to write: --proxies and/or --pgu-stats")
    with _progress(not quiet and not as_json) as tick:
        written = add_states(
            ckpt, states, precision=_precision(device), force=force, on_progress=tick
        )
    if as_json:
        _emit_json({"schema": "unforget.prepare/1", "ckpt": str(ckpt), **_state_paths(written)})
    elif not quiet:
        for path in written.values():
            _console().print(f"wrote {path}")


# The flags that name a method's saved state (train, prepare) and their JSON keys.
_STATE_FLAGS = {"pgu_stats": ("pgu", "pgu_statistics"), "proxies": ("proxy-distill", "proxies")}


def _states(**flags: bool) -> tuple[str, ...]:
    """The methods whose saved state the given flags ask for, in a fixed order."""
    return tuple(method for flag, (method, _) in _STATE_FLAGS.items() if flags.get(flag))


def _state_paths(written: dict[str, Path]) -> dict[str, str | None]:
    """Each state's JSON key -> the file written for it, or None."""
    return {
        key: str(written[method]) if method in written else None
        for method, key in _STATE_FLAGS.values()
    }


def report_json(report: Any) -> dict[str, Any]:
    from unforget.config.options import as_plain

    return {
        "schema": "unforget.train/1",
        "out": str(report.out),
        "sha256": report.sha256,
        "train": report.train.as_dict(),
        "heldout": report.heldout.as_dict(),
        "seconds": round(report.result.seconds, 3),
        **_state_paths(report.states),
        "spec": as_plain(report.spec),
    }


@app.command(
    name="inspect",
    epilog="Example:\n\n  unforget inspect --ckpt model.unlearned.safetensors"
    " --check-ids ids.txt --json",
)
def inspect_cmd(
    ckpt_arg: CkptArg = None,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Checkpoint (.safetensors).")] = None,
    check_ids: Annotated[
        Path | None,
        typer.Option("--check-ids", help="Manifest: which of its IDs the ledger covers."),
    ] = None,
    ledger_key: LedgerKeyFile = None,
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Show a checkpoint's tensors, spec, provenance and deletion ledger (read-only)."""
    from unforget.cli.render import print_summary
    from unforget.io.ledger import using_key_file
    from unforget.io.manifest import read_manifest
    from unforget.workflows.inspect import summarise

    ckpt = _one_ckpt(ckpt_arg, ckpt)
    with using_key_file(ledger_key):
        summary = summarise(ckpt, check=read_manifest(check_ids) if check_ids else None)
    if as_json:
        _emit_json(summary.as_dict())
    elif not quiet:
        print_summary(_console(), summary)


@app.command(
    name="export-hf",
    epilog="Example:\n\n  unforget export-hf --ckpt model.unlearned.safetensors"
    " --out minilm-unlearned/",
)
def export_hf(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    ckpt_arg: CkptArg = None,
    base: Annotated[
        Path | None,
        typer.Option("--base", help="Pretrained model directory (default: the one in the spec)."),
    ] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option("--ckpt", help="Checkpoint of unforget.models.hf:sequence_classifier."),
    ] = None,
    force: Force = False,
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a HuggingFace model directory (config, tokenizer, weights) from a checkpoint."""
    from unforget.workflows.export_hf import export_model_dir

    ckpt = _one_ckpt(ckpt_arg, ckpt)
    done = export_model_dir(ckpt, out, base=base, force=force)
    if as_json:
        _emit_json(
            {
                "schema": "unforget.export-hf/1",
                "out": str(done.out),
                "checkpoint_sha256": done.checkpoint_sha256,
                "files": list(done.files),
            }
        )
    elif not quiet:
        _console().print(f"exported {ckpt} -> {done.out} ({', '.join(done.files)})")


@app.command(
    epilog="Examples:\n\n  unforget apply --ckpt model.safetensors --forget ids.txt"
    "\n\n  unforget apply --ckpt model.safetensors --forget ids.txt --method scrub --json"
    "\n\n  unforget apply --ckpt model.safetensors --forget ids.txt --set lr=3e-4",
)
def apply(
    ckpt: Annotated[
        Path,
        typer.Option(
            "--ckpt",
            help="Input checkpoint (never modified): a .safetensors file or a HuggingFace "
            "model directory (save_pretrained output).",
        ),
    ],
    forget: Annotated[
        Path,
        typer.Option(
            "--forget", help="Manifest: IDs to forget, one per line (or CSV/JSONL with 'id')."
        ),
    ],
    method: Annotated[
        str, typer.Option("--method", "-m", help="Unlearning method (see `unforget methods`).")
    ] = "proxy-distill",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output checkpoint (default: <stem>.unlearned.safetensors; for a model "
            "directory DIR: DIR.unlearned/, again a model directory).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for shuffling and sampling.")] = 0,
    sets: Sets = None,
    config: Config = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Data folder (overrides the checkpoint's spec).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Architecture (needed to run plugin model code).")
    ] = None,
    accept_data_change: Annotated[
        bool,
        typer.Option(
            "--accept-data-change",
            help="Proceed although the training data's fingerprint "
            "differs from the one the model was trained on (recorded in the receipt).",
        ),
    ] = False,
    max_retain_drop: Annotated[
        float,
        typer.Option(
            "--max-retain-drop",
            help="Guard rail: stop if retain accuracy falls this much (absolute) below its start.",
        ),
    ] = 0.15,
    device: Device = "auto",
    compile_model: Compile = False,
    force: Force = False,
    ledger_key: LedgerKeyFile = None,
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Unlearn the manifest's IDs; write a new checkpoint and a receipt beside it."""
    from unforget.cli.render import print_apply
    from unforget.methods.base import GuardConfig
    from unforget.workflows.unlearn import ApplyRequest
    from unforget.workflows.unlearn import apply as run_apply

    spec_sets, options = _split_sets(sets)
    request = ApplyRequest(
        ckpt=ckpt,
        manifest=forget,
        method=method,
        options=options,
        out=out,
        seed=seed,
        force=force,
        config=config,
        flags={**_flags(None, **{"data.path": data, "model.name": model}), **spec_sets},
        accept_data_change=accept_data_change,
        guard=GuardConfig(max_retain_drop=max_retain_drop),
    )
    from unforget.io.ledger import using_key_file

    with _progress(not quiet and not as_json) as tick, using_key_file(ledger_key):
        result = run_apply(
            request, precision=_precision(device, compile=compile_model), on_progress=tick
        )
    if as_json:
        _emit_json(apply_json(result))
    elif not quiet:
        print_apply(_console(), result)
    _key_notice(result.ledger_key_created, quiet=quiet or as_json)
    return 0  # also for a re-sent request: its IDs are already covered (JSON: already_applied)


def apply_json(result: Any) -> dict[str, Any]:
    """The receipt plus ``already_applied`` (bool) and the forget-vs-held-out assessment."""
    if result.receipt is None:
        return {
            "schema": "unforget.receipt/1",
            "already_applied": True,
            "already_applied_by": result.already_applied,
            "output_path": None,
        }
    return {
        **result.receipt.as_dict(),
        "already_applied": False,
        "assessment": result.assessment.as_dict() if result.assessment else None,
    }


def _key_notice(created: Path | None, *, quiet: bool) -> None:
    """Say once, when the default ledger key was just created, where it is and why it matters."""
    if created is not None and not quiet:
        _console().print(
            f"created the deletion-ledger key {created} (mode 0600). Keep it private and backed "
            "up: it is needed to check which IDs a model's ledger covers, and nobody holding "
            "only the model can list them."
        )


@app.command(
    epilog="Exit codes: 0 PASS, 3 FAIL-LEAK, 4 FAIL-OVER, 5 INCONCLUSIVE (1 error, 2 bad input)."
    "\n\nExamples:\n\n  unforget audit --ckpt model.unlearned.safetensors --forget ids.txt"
    "\n\n  unforget audit --ckpt m.unlearned.safetensors --forget ids.txt --original "
    "m.safetensors --refs 4 --jobs 2 --json --csv scores.csv --plot roc.png",
)
def audit(
    ckpt: Annotated[
        Path,
        typer.Option(
            "--ckpt",
            help="Checkpoint to audit: a .safetensors file or a HuggingFace model directory.",
        ),
    ],
    forget: Annotated[Path, typer.Option("--forget", help="Manifest of the forgotten IDs.")],
    original: Annotated[
        Path | None,
        typer.Option(
            "--original",
            help="The model before unlearning (positive control; default: the "
            "input named in the receipt beside --ckpt).",
        ),
    ] = None,
    retrained: Annotated[
        list[Path] | None,
        typer.Option(
            "--retrained",
            help="A model retrained without the forget set (counts as a reference; repeatable).",
        ),
    ] = None,
    refs: Annotated[str, typer.Option("--refs", help="Reference models: auto, 0, or K.")] = "auto",
    budget: Annotated[
        float, typer.Option("--budget", help="Minutes for training references (with --refs auto).")
    ] = 10.0,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", help="Local processes training references (torch threads = cores / N)."
        ),
    ] = 1,
    ref_source: Annotated[
        str,
        typer.Option(
            "--ref-source",
            help="retain: references trained per request on the retain set; pool: trained "
            "once on the held-out pool and reused by every request (see README).",
        ),
    ] = "retain",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    delta_auc: Annotated[float, typer.Option("--delta-auc", help="AUC margin δ.")] = 0.03,
    tpr_margin: Annotated[float, typer.Option("--tpr-margin", help="TPR@1%FPR margin.")] = 0.03,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Test level (split over the AUC and tail tests).")
    ] = 0.01,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Per-sample scores CSV.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Log-log ROC plot (PNG).")] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Reference model cache (default ~/.cache/unforget)."),
    ] = None,
    config: Config = None,
    sets: Sets = None,
    data: Annotated[str | None, typer.Option("--data", help="Data folder override.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Architecture (needed to run plugin model code).")
    ] = None,
    accept_data_change: Annotated[
        bool,
        typer.Option(
            "--accept-data-change",
            help="Proceed although the training data's fingerprint differs from the one the "
            "model was trained on.",
        ),
    ] = False,
    ledger_key: LedgerKeyFile = None,
    device: Device = "auto",
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Membership-inference audit of the forget set against held-out data, with controls."""
    from unforget.errors import InputError
    from unforget.mia.results import VerdictRule
    from unforget.workflows.audit import AuditRequest, run_audit
    from unforget.workflows.audit_output import print_audit, to_json, write_csv, write_plot

    if refs != "auto" and not refs.isdigit():
        raise InputError(f"--refs must be auto, 0 or a positive integer, not {refs!r}")
    try:
        rule = VerdictRule(alpha=alpha, delta_auc=delta_auc, tpr_margin=tpr_margin)
    except ValueError as exc:
        raise InputError(f"verdict settings: {exc}") from exc
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # fail before the expensive part
            raise InputError("--plot needs matplotlib: pip install 'unforget[plot]'")
    from unforget.io.ledger import using_key_file
    from unforget.io.paths import check_audit_paths
    from unforget.workflows.workspace import data_folder_of

    request = AuditRequest(
        ckpt=ckpt,
        manifest=forget,
        original=original,
        retrained=tuple(retrained or ()),
        refs=None if refs == "auto" else int(refs),
        budget_minutes=budget,
        seed=seed,
        rule=rule,
        config=config,
        flags=_flags(sets, **{"data.path": data, "model.name": model}),
        cache_dir=cache_dir,
        accept_data_change=accept_data_change,
        jobs=jobs,
        ref_source=ref_source,
    )
    check_audit_paths(
        ckpt=ckpt,
        manifest=forget,
        original=original,
        retrained=tuple(retrained or ()),
        config=config,
        data=data_folder_of(ckpt, config=config, flags=request.flags),
        outputs={"--csv": csv_path, "--plot": plot},
    )
    console = _console()
    notice = (lambda text: None) if quiet or as_json else (lambda text: console.print(text))
    with _progress(not quiet and not as_json) as tick, using_key_file(ledger_key):
        report = run_audit(
            request,
            precision=_precision(device),
            on_progress=tick,
            on_notice=notice,
            on_warning=lambda text: console.print(text, style="bold yellow"),
        )
    from unforget.runtime.distributed import is_writer

    if csv_path and is_writer():
        write_csv(report, csv_path)
    if plot and is_writer():
        write_plot(report, plot)
    if as_json:
        _emit_json(to_json(report))
    elif not quiet:
        print_audit(console, report)
    return report.verdict.exit_code


@app.command(epilog="Example:\n\n  unforget methods --json")
def methods(
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """List unlearning methods with the data each needs and their options."""
    from unforget.cli.render import print_methods
    from unforget.config.options import describe
    from unforget.methods import available, get_method

    rows = []
    for name in available():
        m = get_method(name)
        rows.append(
            {
                "name": name,
                "summary": m.info.summary,
                "needs": list(m.info.needs),
                "paper": m.info.paper,
                "options": describe(m.Config),
            }
        )
    if as_json:
        _emit_json({"schema": "unforget.methods/1", "methods": rows})
    elif not quiet:
        print_methods(_console(), rows)


@app.command(
    epilog="Examples:\n\n  unforget bench --quick --out bench-quick/"
    "\n\n  unforget bench --data fashion-mnist --forget random:0.01,random:0.1,random:0.3,"
    "class:Sandal --methods proxy-distill,retrain,finetune,scrub --seeds 3 --out bench/",
)
def bench(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="fashion-mnist (Debian package), sample, text (both only in a source "
            "checkout), or a data folder; with --quick it replaces the shipped sample.",
        ),
    ] = "fashion-mnist",
    forget: Annotated[
        str,
        typer.Option("--forget", help="Comma-separated settings: random:FRACTION or class:NAME."),
    ] = ("random:0.01,random:0.1,random:0.3,class:Sandal"),
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated methods (must include retrain).")
    ] = ("proxy-distill,retrain,finetune,neggrad+,scrub"),
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per setting.")] = 1,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Training epochs of the original and retrained models.")
    ] = 20,
    out: Annotated[Path, typer.Option("--out", help="Output folder (results.md/json/png).")] = (
        Path("bench")
    ),
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Small run on the shipped sample: a few minutes on 2 CPU cores."
        ),
    ] = False,
    proxies: Annotated[
        bool,
        typer.Option(
            "--proxies",
            help="Train each original with its cross-fitted proxies (as train --proxies), so "
            "proxy-distill trains nothing at apply time; their cost is in the original's time.",
        ),
    ] = False,
    device: Device = "auto",
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Every method against exact retraining: quality gaps and time ratios from one run."""
    from unforget.errors import InputError
    from unforget.methods import METHODS
    from unforget.workflows.bench import BenchConfig, markdown, quick_config, run_bench

    if seeds < 1:
        raise InputError("--seeds must be >= 1")
    config = (
        quick_config(out, data="sample" if data == "fashion-mnist" else data, proxies=proxies)
        if quick
        else BenchConfig(
            data=data,
            settings=tuple(x.strip() for x in forget.split(",") if x.strip()),
            methods=tuple(x.strip() for x in methods.split(",") if x.strip()),
            seeds=seeds,
            out=out,
            recipe={"epochs": epochs, "batch_size": 128, "lr": 1e-3},
            proxies=proxies,
        )
    )
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown methods {unknown} (valid: {', '.join(METHODS)})")
    console = _console()
    notice = (lambda text: None) if quiet or as_json else (lambda text: console.print(text))
    with _progress(not quiet and not as_json) as tick:
        result = run_bench(config, precision=_precision(device), on_progress=tick, on_notice=notice)
    if as_json:
        _emit_json(result)
    elif not quiet:
        sys.stderr.write(markdown(result["summary"]))
        console.print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    return 0


cache_app = typer.Typer(
    help="The cache of data conversions and audit reference models ($UNFORGET_CACHE).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command(
    "prune",
    epilog="Examples:\n\n  unforget cache prune --ckpt model.unlearned.safetensors"
    "\n\n  unforget cache prune --all --dry-run --json",
)
def cache_prune(
    ckpt: Annotated[
        list[Path] | None,
        typer.Option(
            "--ckpt",
            help="Checkpoint whose deletion ledger says what is deleted: reference models "
            "trained on any of those rows are removed (repeatable).",
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Remove every cached reference model.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    ledger_key: LedgerKeyFile = None,
    as_json: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Remove cached copies a deletion made stale (reference models, datasets conversions)."""
    from unforget.io.cache import cache_root, prune
    from unforget.io.ledger import using_key_file
    from unforget.workflows.workspace import deleted_rows

    with using_key_file(ledger_key):
        deleted = [deleted_rows(p) for p in ckpt or []]
    result = prune(deleted, everything=everything, dry_run=dry_run)
    if as_json:
        _emit_json(
            {
                "schema": "unforget.cache-prune/1",
                "root": str(cache_root()),
                "removed": [str(p) for p in result.removed],
                "freed_bytes": result.freed_bytes,
                "kept_references": result.kept,
                "dry_run": dry_run,
            }
        )
    elif not quiet:
        verb = "would remove" if dry_run else "removed"
        for path in result.removed:
            _console().print(f"{verb} {path}")
        _console().print(
            f"{verb} {len(result.removed)} entries ({result.freed_bytes / 2**20:.1f} MiB) under "
            f"{cache_root()}; {result.kept} reference models kept"
        )


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (the error boundary).

    Errors of the :class:`UnforgetError` hierarchy become one line on stderr and their exit
    code; anything unexpected is exit 1 with one line. ``--debug`` adds the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _quiet_libraries(args)
    exit_types, abort_types, usage_types, click_types = _click_exception_types()
    try:
        result = app(args=args, standalone_mode=False, prog_name="unforget")
    except exit_types as exc:
        code = int(getattr(exc, "exit_code", 0) or 0)
        if code == EXIT_INTERRUPTED:  # Typer turns Ctrl-C into Exit(130)
            sys.stderr.write(_INTERRUPTED)
        return code
    except abort_types:
        sys.stderr.write("unforget: aborted\n")
        return EXIT_FAILURE
    except click_types as exc:
        exc.show()  # type: ignore[attr-defined]
        return EXIT_BAD_INPUT if isinstance(exc, usage_types) else int(exc.exit_code)  # type: ignore[attr-defined]
    except UnforgetError as exc:
        _fail(exc, debug=debug)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(_INTERRUPTED)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the boundary: anything else is a runtime failure, one line
        _fail(exc, debug=debug, unexpected=True)
        return EXIT_FAILURE
    code = int(result) if isinstance(result, int) else 0
    if code == EXIT_INTERRUPTED:  # Typer returns Ctrl-C as 130 without a word
        sys.stderr.write(_INTERRUPTED)
    return code


_INTERRUPTED = "unforget: interrupted (Ctrl-C); no output was written or replaced\n"


def _quiet_libraries(args: list[str]) -> None:
    """No third-party progress bars (``datasets``' "Generating train split", "Map") unless a
    person is watching: off with --quiet or --json, and whenever stderr is not a terminal."""
    import os

    if {"--quiet", "-q", "--json"} & set(args) or not sys.stderr.isatty():
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when datasets is imported
        if "datasets" in sys.modules:  # already imported (tests, library use)
            from datasets.utils import disable_progress_bars

            disable_progress_bars()


def _click_exception_types() -> tuple[tuple[type[BaseException], ...], ...]:
    """Exit/abort/usage/other exception classes of click AND of the copy Typer >= 0.2x vendors.

    Derived from Typer's public exception classes (``typer.Exit``, ``typer.Abort``,
    ``typer.BadParameter``) so the boundary works whichever click implementation Typer uses.
    """
    import click

    bad_parameter_mro = typer.BadParameter.__mro__
    usage = next(c for c in bad_parameter_mro if c.__name__ == "UsageError")
    base = next(c for c in bad_parameter_mro if c.__name__ == "ClickException")
    return (
        (typer.Exit, click.exceptions.Exit),
        (typer.Abort, click.exceptions.Abort),
        (usage, click.UsageError),
        (base, click.ClickException),
    )


def _fail(exc: BaseException, *, debug: bool, unexpected: bool = False) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    kind = f"{type(exc).__name__}: " if unexpected else ""
    hint = "" if debug else " (run with --debug for details)" if unexpected else ""
    text = exc.message_for(FLAGS) if isinstance(exc, UnforgetError) else str(exc)
    message = " ".join(text.split())
    sys.stderr.write(f"unforget: error: {kind}{message}{hint}\n")


# The library's messages name parameters (unforget.errors.param); these are their flags here.
FLAGS = {
    "accept_data_change": "--accept-data-change",
    "base": "--base",
    "budget_minutes": "--budget",
    "ckpt": "--ckpt",
    "config": "--config",
    "data": "--data",
    "delta_auc": "--delta-auc",
    "device": "--device",
    "exclude": "--exclude",
    "force": "--force",
    "jobs": "--jobs",
    "ledger_key": "--ledger-key",
    "like": "--like",
    "manifest": "--forget",
    "method": "--method",
    "methods": "--methods",
    "model": "--model",
    "options": "--set",
    "original": "--original",
    "out": "--out",
    "plot": "--plot",
    "ref_source": "--ref-source",
    "refs": "--refs",
    "retrained": "--retrained",
}


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
