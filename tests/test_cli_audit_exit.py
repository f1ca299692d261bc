"""``unforget audit``'s exit codes are the stable contract a pipeline reads: each verdict status
maps to its code through the real CLI (with ``--json`` and without), bad input is 2.

The audit's statistics are tested elsewhere (test_audit_verdict, test_audit_e2e); here the
pipeline function is replaced by one that returns a report with a chosen verdict, so every
code is exercised in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unforget.cli import run
from unforget.mia.power import sample_size_check
from unforget.mia.results import EXIT_CODES, Verdict, VerdictRule
from unforget.workflows import audit as audit_workflow
from unforget.workflows.audit import AuditReport, report_without_models


def _report(status: str) -> AuditReport:
    sample = sample_size_check(1200, 3000, k=4, rule=VerdictRule())
    verdict = Verdict(
        status=status,  # type: ignore[arg-type]
        exit_code=EXIT_CODES[status],  # type: ignore[index]
        reasons=() if status == "PASS" else ("auc_interval_too_wide",),
        evidence="strong" if status == "PASS" else "none",
        min_detectable_auc=sample.min_detectable_auc_delta,
        explanation=f"chosen by the test: {status}",
    )
    return report_without_models(
        verdict,
        sample=sample,
        inputs={},
        settings={},
        timing={"total_seconds": 0.0},
        attack="rmia",
        k=4,
    )


@pytest.mark.parametrize("status", sorted(EXIT_CODES))
@pytest.mark.parametrize("as_json", [False, True])
def test_each_verdict_has_its_exit_code(
    status: str,
    as_json: bool,
    tiny_ckpt: Path,
    sample_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(audit_workflow, "run_audit", lambda request, **_: _report(status))
    argv = ["audit", "--ckpt", str(tiny_ckpt), "--forget", str(sample_dir / "forget_random20.txt")]
    code = run([*argv, "--refs", "4", "--device", "cpu", *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert code == EXIT_CODES[status]  # type: ignore[index]
    if as_json:
        payload = json.loads(out)  # one JSON object, nothing else on stdout
        assert payload["verdict"]["status"] == status
        assert payload["exit_code"] == code
    else:
        assert out == "" and f"verdict: {status}" in err


def test_bad_input_is_exit_2_with_one_line(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.txt"
    code = run(["audit", "--ckpt", str(tiny_ckpt), "--forget", str(missing), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "nope.txt" in err


def test_a_tiny_request_without_references_gets_a_verdict_not_a_crash(
    sample_ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 IDs and ``--refs 0`` once ended in exit 1 (the legacy loss attack's 5 folds): the
    audit still attacks and answers with a verdict; the legacy number is null."""
    lines = (sample_dir / "forget_random10.txt").read_text().splitlines()
    ids = [line for line in lines if line and not line.startswith("#")][:3]
    manifest = tmp_path / "three.txt"
    manifest.write_text("\n".join(ids) + "\n")
    code = run(
        [
            "audit",
            "--ckpt",
            str(sample_ckpt),
            "--forget",
            str(manifest),
            "--refs",
            "0",
            "--device",
            "cpu",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert out, err
    payload = json.loads(out)
    assert code == payload["exit_code"] and code in (3, 5)
    assert payload["target"]["legacy"]["lr_attack_accuracy"] is None
