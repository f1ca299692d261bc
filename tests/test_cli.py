"""The command line (DESIGN §2): exit codes, one-line errors without tracebacks, nothing written on
failure, ``--json`` = exactly one JSON object on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unforget import cli
from unforget.errors import EXIT_BAD_INPUT, EXIT_FAILURE
from unforget.io.fileio import sha256_file
from unforget.io.manifest import read_manifest
from unforget.methods import available

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unforget: error: ")
    assert "Traceback" not in err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("train", "apply", "inspect", "methods"):
        assert command in out


def test_apply_help_shows_options_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["apply", "--help"], capsys)
    assert code == 0
    for needle in ("--ckpt", "--forget", "--method", "--set", "--force", "--json", "Examples"):
        assert needle in out


def test_python_dash_m_unforget(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "unforget", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for command in ("train", "apply", "inspect", "methods"):
        assert command in done.stdout


@pytest.fixture
def bad_inputs(tmp_path: Path, tiny_ckpt: Path, sample_dir: Path) -> dict[str, list[str]]:
    """apply argument lists, each with exactly one thing wrong."""
    good = sample_dir / "forget_random10.txt"
    (tmp_path / "model.pt").write_bytes(b"not really a pickle")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "empty.txt").write_text("# nothing to delete\n\n")
    (tmp_path / "unknown.txt").write_text("fmnist-train-00001\nno-such-id\n")
    (tmp_path / "heldout.txt").write_text("fmnist-test-00001\n")
    (tmp_path / "wide.toml").write_text("[model]\nkwargs = { hidden = [64] }\n")
    base = ["apply", "--forget", str(good), "--device", "cpu"]
    ckpt = ["--ckpt", str(tiny_ckpt)]
    return {
        "missing checkpoint": [*base, "--ckpt", str(tmp_path / "absent.safetensors")],
        "pickle checkpoint": [*base, "--ckpt", str(tmp_path / "model.pt")],
        "corrupt checkpoint": [*base, "--ckpt", str(tmp_path / "corrupt.safetensors")],
        "wrong architecture": [*base, *ckpt, "--config", str(tmp_path / "wide.toml")],
        "missing data": [*base, *ckpt, "--data", str(tmp_path / "no-data")],
        "empty manifest": ["apply", *ckpt, "--forget", str(tmp_path / "empty.txt")],
        "missing manifest": ["apply", *ckpt, "--forget", str(tmp_path / "absent.txt")],
        "unknown IDs": ["apply", *ckpt, "--forget", str(tmp_path / "unknown.txt")],
        "held-out IDs": ["apply", *ckpt, "--forget", str(tmp_path / "heldout.txt")],
        "unknown method": [*base, *ckpt, "--method", "amnesia"],
        "unknown option": [*base, *ckpt, "--set", "learning_rate=0.1"],
        "bad option value": [*base, *ckpt, "--set", "lr=fast"],
        "option out of range": [*base, *ckpt, "--set", "lr=-1"],
        "malformed --set": [*base, *ckpt, "--set", "lr"],
        "unknown device": [*base, *ckpt, "--device", "tpu"],
    }


EXPECTED = {
    "missing checkpoint": "does not exist",
    "pickle checkpoint": "pickle",
    "corrupt checkpoint": "not a readable safetensors file",
    "wrong architecture": "does not fit the spec's architecture",
    "missing data": "does not exist",
    "empty manifest": "lists no IDs",
    "missing manifest": "does not exist",
    "unknown IDs": "1 IDs are not in the training split (first: 'no-such-id')",
    "held-out IDs": "held-out split",
    "unknown method": "unknown method 'amnesia' (valid: nabla-tau",
    "unknown option": "unknown option 'learning_rate'",
    "bad option value": "lr='fast': expected a number",
    "option out of range": "lr must be > 0",
    "malformed --set": "'lr' is not key=value",
    "unknown device": "device 'tpu' (use auto, cpu, cuda or cuda:N)",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_apply_inputs_exit_2_with_one_line_and_write_nothing(
    case: str,
    bad_inputs: dict[str, list[str]],
    tmp_path: Path,
    tiny_ckpt: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outdir = tmp_path / "outputs"
    outdir.mkdir()
    ckpt_before = sha256_file(tiny_ckpt)
    tiny_folder = sorted(p.name for p in tiny_ckpt.parent.iterdir())
    code, out, err = run([*bad_inputs[case], "--out", str(outdir / "x.safetensors")], capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_line_error(err)
    assert EXPECTED[case] in err
    assert out == ""
    assert list(outdir.iterdir()) == []
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == tiny_folder
    assert sha256_file(tiny_ckpt) == ckpt_before


def test_existing_output_is_refused_without_force(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"an earlier result")
    code, stdout, err = run(
        [
            "apply",
            "--ckpt",
            tiny_ckpt,
            "--forget",
            sample_dir / "forget_random10.txt",
            "--out",
            out,
            "--json",
        ],
        capsys,
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line_error(err)
    assert "already exists; pass --force" in err and stdout == ""
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_out_equal_to_input_is_refused(
    tiny_ckpt: Path, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256_file(tiny_ckpt)
    args = ["apply", "--ckpt", tiny_ckpt, "--forget", sample_dir / "forget_random10.txt"]
    code, _, err = run([*args, "--out", tiny_ckpt, "--force"], capsys)
    assert code == EXIT_BAD_INPUT
    assert_one_line_error(err)
    assert "never overwrites its input" in err
    assert sha256_file(tiny_ckpt) == before


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["inspect", tmp_path / "absent.safetensors"]
    code, _, err = run([*args, "--debug"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "Traceback (most recent call last)" in err and "CheckpointError" in err
    assert err.splitlines()[-1].startswith("unforget: error: checkpoint")


def test_unexpected_errors_are_exit_1_with_one_line_and_a_hint(
    tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("unforget.workflows.inspect.summarise", boom)
    code, out, err = run(["inspect", tiny_ckpt], capsys)
    assert code == EXIT_FAILURE and out == ""
    assert_one_line_error(err)
    assert err == "unforget: error: RuntimeError: boom second line (run with --debug for details)\n"


@pytest.mark.parametrize(
    "argv",
    [["apply", "--ckpt", "m.safetensors"], ["methods", "--bogus"], ["apply", "--seed", "x"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == EXIT_BAD_INPUT
    assert "Traceback" not in err and "--debug" not in err


def test_inspect_json_is_one_object_on_stdout(
    tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["inspect", tiny_ckpt, "--json"], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)  # the whole of stdout is one JSON document
    assert report["schema"] == "unforget.inspect/1"
    assert report["sha256"] == sha256_file(tiny_ckpt)
    assert report["tensors"] == 4  # hidden [128]: two Linear layers, weight + bias each
    assert report["parameters"] == 784 * 128 + 128 + 128 * 10 + 10
    assert report["dtypes"] == {"float32": 4}
    assert report["spec"]["model"] == {"name": "mlp", "kwargs": {"hidden": [128]}}
    assert report["provenance"]["command"] == "train"
    assert report["ledger"] == [] and report["deleted_total"] == 0


def test_inspect_check_ids(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("fmnist-train-00001\nsomeone\n")
    code, out, _ = run(["inspect", tiny_ckpt, "--check-ids", ids, "--json"], capsys)
    assert code == 0
    assert json.loads(out)["id_check"] == {
        "covered": [],
        "not_covered": ["fmnist-train-00001", "someone"],
    }


def test_inspect_human_output_goes_to_stderr(
    tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["inspect", tiny_ckpt], capsys)
    assert code == 0 and out == ""
    assert "4 tensors" in err and "deletion ledger: empty" in err


def test_methods_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["methods", "--json"], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert [m["name"] for m in report["methods"]] == available()
    nabla = next(m for m in report["methods"] if m["name"] == "nabla-tau")
    assert set(nabla["needs"]) == {"forget", "retain", "reference"}
    options = {o["name"]: o for o in nabla["options"]}
    assert options["lr"]["default"] == "0.001" and options["lr"]["type"] == "float"
    assert options["alpha0"]["default"] == "null"


def test_train_json_writes_a_checkpoint_and_prints_one_object(
    sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.safetensors"
    args = [
        "train",
        "--data",
        sample_dir / "fashion-mnist",
        "--set",
        'model.kwargs={"hidden": [32]}',
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--out",
        out,
        "--json",
    ]
    code, stdout, _ = run(args, capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["sha256"] == sha256_file(out)
    assert report["spec"]["model"]["kwargs"] == {"hidden": [32]}
    assert report["spec"]["recipe"]["epochs"] == 1 and report["train"]["n"] == 6000
    assert report["heldout"]["accuracy"] > 0.5  # chance is 0.1
    code, stdout, err = run(args, capsys)
    assert code == EXIT_BAD_INPUT and stdout == ""
    assert_one_line_error(err)


def test_train_exclude_with_unknown_ids_fails_before_training(
    sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("nobody\n")
    assert read_manifest(ids).ids == ("nobody",)
    out = tmp_path / "m.safetensors"
    code, _, err = run(
        ["train", "--data", sample_dir / "fashion-mnist", "--exclude", ids, "--out", out],
        capsys,
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line_error(err)
    assert "not in the training split" in err and not out.exists()


def test_pickle_input_never_reaches_torch_load(
    tmp_path: Path,
    sample_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(1)}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    code, _, err = run(["inspect", path], capsys)
    assert code == EXIT_BAD_INPUT
    assert_one_line_error(err)
