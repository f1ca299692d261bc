"""Command-line conventions every command follows (issue 15): ``--version``, ``-h``, ``--ckpt``
as an option wherever a checkpoint is read, ``--json/--quiet/--debug`` everywhere, one meaning
of ``--set``, and help text for every method option. Run with typer's ``CliRunner``; exit codes
of errors go through :func:`unforget.cli.run`, the error boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unforget import __version__, cli
from unforget.errors import EXIT_BAD_INPUT
from unforget.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CKPT = ROOT / "sample_data" / "model.safetensors"
COMMANDS = sorted(c.name or c.callback.__name__ for c in cli.app.registered_commands)  # type: ignore[union-attr]
READS_A_CHECKPOINT = ("apply", "audit", "inspect", "export-hf")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def listing() -> tuple[dict, str]:
    """``unforget methods --json`` and the human listing, run once."""
    runner = CliRunner()
    as_json = json.loads(runner.invoke(cli.app, ["methods", "--json"]).stdout)
    return as_json, runner.invoke(cli.app, ["methods"]).output


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"unforget {__version__}"


def test_the_command_list_is_what_the_tests_cover() -> None:
    assert set(COMMANDS) == {
        "train",
        "prepare",
        "inspect",
        "export-hf",
        "apply",
        "audit",
        "methods",
        "bench",
    }


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_dash_h_is_help(runner: CliRunner, command: str | None) -> None:
    argv = [command] if command else []
    short = runner.invoke(cli.app, [*argv, "-h"])
    long = runner.invoke(cli.app, [*argv, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout
    assert "Usage:" in short.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_json_quiet_debug(runner: CliRunner, command: str) -> None:
    out = runner.invoke(cli.app, [command, "-h"]).stdout
    for flag in ("--json", "--quiet", "--debug"):
        assert flag in out, f"{command} lacks {flag}"


@pytest.mark.parametrize("command", READS_A_CHECKPOINT)
def test_every_command_reading_a_checkpoint_has_the_ckpt_option(
    runner: CliRunner, command: str
) -> None:
    assert "--ckpt" in runner.invoke(cli.app, [command, "-h"]).stdout


def test_audit_takes_model_and_set_like_apply(runner: CliRunner) -> None:
    apply_help = runner.invoke(cli.app, ["apply", "-h"]).stdout
    audit_help = runner.invoke(cli.app, ["audit", "-h"]).stdout
    for flag in ("--model", "--set", "--config", "--data"):
        assert flag in apply_help and flag in audit_help, flag


def test_inspect_positional_and_option_agree(capsys: pytest.CaptureFixture[str]) -> None:
    """The older positional form keeps working and gives exactly what --ckpt gives."""
    outputs = []
    for argv in (["inspect", str(SAMPLE_CKPT)], ["inspect", "--ckpt", str(SAMPLE_CKPT)]):
        assert cli.run([*argv, "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect"],  # no checkpoint at all
        ["inspect", str(SAMPLE_CKPT), "--ckpt", "other.safetensors"],  # two different ones
        ["export-hf", "--out", "x"],
    ],
)
def test_missing_or_conflicting_checkpoint_is_bad_input(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("unforget: error: ") and "ckpt" in err


def test_methods_quiet_and_json(runner: CliRunner, listing: tuple[dict, str]) -> None:
    quiet = runner.invoke(cli.app, ["methods", "--quiet"])
    assert quiet.exit_code == 0
    assert quiet.output == ""
    listed = listing[0]
    assert [m["name"] for m in listed["methods"]] == list(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_option_has_help(method: str, listing: tuple[dict, str]) -> None:
    """Help comes from each config field's ``metadata["help"]``, shown by ``unforget methods``."""
    listed, shown = listing
    (row,) = [m for m in listed["methods"] if m["name"] == method]
    missing = [o["name"] for o in row["options"] if not o["help"].strip()]
    assert not missing, f"{method}: options without help: {missing}"
    for option in row["options"]:
        assert f"{option['name']}={option['default']}  {option['help'][:20]}" in shown


def test_set_has_one_meaning() -> None:
    """Section keys go to the run spec in every command; other keys are method options
    (``method.`` may be written out), which only apply has."""
    from unforget.cli.app import _split_sets

    spec, method = _split_sets(
        ["data.input_columns=text", "recipe.batch_size=16", "lr=3e-4", "method.power=1"]
    )
    assert spec == {"data.input_columns": "text", "recipe.batch_size": "16"}
    assert method == {"lr": "3e-4", "power": "1"}


@pytest.mark.parametrize("command", ["train", "audit"])
def test_set_of_a_method_option_outside_apply_is_bad_input(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "train": ["train", "--out", str(tmp_path / "m.safetensors")],
        "audit": ["audit", "--ckpt", str(SAMPLE_CKPT), "--forget", "ids.txt"],
    }[command]
    assert cli.run([*argv, "--set", "lr=0.1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "not a run-spec key" in err
    assert not (tmp_path / "m.safetensors").exists()
