"""Reference models the audit can trust (issue 11, items 4–5).

* Identity and cache key include the data (IDs, labels and input bytes): after a label change
  accepted with ``--accept-data-change`` a cached reference is not reused.
* Each cached reference's SHA-256 is recorded when written and checked on reuse: a reference
  replaced by a copy of the audited model (which forged a PASS before) is detected, rebuilt
  bit-for-bit, and said on stderr; the audit JSON lists identity and hashes.
* ``--jobs N`` workers give the same weights as a sequential run.
* ``--refs auto`` never picks fewer references than a PASS needs.

The models are tiny (one hidden layer of 16, one epoch) so each test trains in well under a
second; the end-to-end forgery on the shipped sample is marked slow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unforget import cli
from unforget.cli.app import FLAGS
from unforget.errors import EXIT_BAD_INPUT, InputError
from unforget.io.fileio import sha256_file
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows import ref_budget, ref_worker, references
from unforget.workflows.audit import AuditRequest, run_audit
from unforget.workflows.audit_output import to_json
from unforget.workflows.workspace import Workspace, open_workspace

CPU = precision_for(resolve_device("cpu"))


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """An MLP with 16 hidden units after one epoch: a few milliseconds per reference."""
    from unforget.config.spec import merge_spec
    from unforget.workflows.train import train_checkpoint

    out = tmp_path_factory.mktemp("micro") / "micro.safetensors"
    spec = merge_spec(
        {
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "data": {"path": str(sample_dir / "fashion-mnist")},
            "recipe": {"epochs": 1, "batch_size": 256, "lr": 0.003, "seed": 0},
        }
    )
    train_checkpoint(spec, out=out, precision=CPU)
    return out


def _refs(
    ws: Workspace, cache: Path, *, seeds: list[int], rows: np.ndarray | None = None, jobs: int = 1
) -> tuple[list[references.Identity], list[references.Record], list[str]]:
    rows = np.arange(0, len(ws.train), 10) if rows is None else rows
    ids = references.identities(ws, source="retain", rows=rows, split=ws.train, seeds=seeds)
    warnings: list[str] = []
    _, records = references.train_references(
        ws,
        identities=ids,
        rows=rows,
        cache_dir=cache,
        precision=CPU,
        jobs=jobs,
        on_warning=warnings.append,
    )
    return ids, records, warnings


def test_tampered_reference_is_detected_and_rebuilt(micro_ckpt: Path, tmp_path: Path) -> None:
    """Replacing a cached reference with the audited checkpoint itself is how a PASS was forged:
    now the hash check fails, a warning names it, and the rebuilt reference has the same weights
    as the honest one (training is deterministic), so nothing downstream changes."""
    ws = open_workspace(micro_ckpt)
    ids, first, warnings = _refs(ws, tmp_path, seeds=[7, 8])
    assert [r.status for r in first] == ["trained", "trained"] and not warnings
    weights, sidecar = references.paths(tmp_path, ids[0])
    assert json.loads(sidecar.read_text())["sha256"] == sha256_file(weights) == first[0].sha256

    shutil.copyfile(micro_ckpt, weights)  # the forgery
    _, second, warnings = _refs(ws, tmp_path, seeds=[7, 8])
    assert [r.status for r in second] == ["rebuilt", "cached"]
    assert len(warnings) == 1 and "failed verification" in warnings[0] and "SHA-256" in warnings[0]
    assert second[0].weights_sha256 == first[0].weights_sha256
    assert sha256_file(weights) == second[0].sha256 != sha256_file(micro_ckpt)

    sidecar.unlink()  # no recorded hash: not trusted either
    _, third, warnings = _refs(ws, tmp_path, seeds=[7, 8])
    assert third[0].status == "rebuilt" and "no recorded SHA-256" in warnings[0]


def test_forged_sidecar_does_not_help(micro_ckpt: Path, tmp_path: Path) -> None:
    """Updating the sidecar's hash to the forged file is caught by the embedded identity."""
    ws = open_workspace(micro_ckpt)
    ids, _, _ = _refs(ws, tmp_path, seeds=[3])
    weights, sidecar = references.paths(tmp_path, ids[0])
    shutil.copyfile(micro_ckpt, weights)
    side = json.loads(sidecar.read_text())
    side["sha256"] = sha256_file(weights)
    sidecar.write_text(json.dumps(side))
    _, records, warnings = _refs(ws, tmp_path, seeds=[3])
    assert records[0].status == "rebuilt" and "identity" in warnings[0]


def _copy_data(
    src: Path, dst: Path, *, label_row: int | None = None, pixel_row: int | None = None
) -> Path:
    shutil.copytree(src, dst)
    table = pq.read_table(dst / "train.parquet")
    if label_row is not None:
        labels = table.column("label").to_pylist()
        labels[label_row] = (labels[label_row] + 1) % 10
        index = table.schema.get_field_index("label")
        table = table.set_column(
            index, table.schema.field(index), pa.array(labels, table.column("label").type)
        )
    if pixel_row is not None:  # swap two images: IDs and labels stay, inputs change
        order = np.arange(table.num_rows)
        order[[pixel_row, pixel_row + 1]] = order[[pixel_row + 1, pixel_row]]
        index = table.schema.get_field_index("image")
        table = table.set_column(
            index, table.schema.field(index), table.column("image").take(pa.array(order))
        )
    pq.write_table(table, dst / "train.parquet")
    return dst


def test_changed_labels_are_not_served_from_the_cache(
    micro_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """Issue 11: after a label change accepted with --accept-data-change the old references were
    reused. The identity hashes the data, so the same request now trains a new reference; the
    same bytes at another path are still the same reference (identity has no paths)."""
    cache = tmp_path / "cache"
    ws = open_workspace(micro_ckpt)
    ids, _, _ = _refs(ws, cache, seeds=[5])
    same = _copy_data(sample_dir / "fashion-mnist", tmp_path / "moved")
    moved = open_workspace(micro_ckpt, flags={"data.path": str(same)})
    moved_ids, records, _ = _refs(moved, cache, seeds=[5])
    assert moved_ids[0].key == ids[0].key and records[0].status == "cached"

    changed = _copy_data(sample_dir / "fashion-mnist", tmp_path / "relabelled", label_row=12)
    ws2 = open_workspace(micro_ckpt, flags={"data.path": str(changed)}, accept_data_change=True)
    ids2, records2, _ = _refs(ws2, cache, seeds=[5])
    assert ws2.data_changed and ids2[0].data_sha256 != ids[0].data_sha256
    assert ids2[0].key != ids[0].key and records2[0].status == "trained"
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_changed_pixels_change_the_identity(
    micro_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """IDs and labels unchanged, one input changed: still another reference."""
    ws = open_workspace(micro_ckpt)
    changed = _copy_data(sample_dir / "fashion-mnist", tmp_path / "pixels", pixel_row=3)
    # The data fingerprint covers inputs too (issue 12 item 5), so the change must be accepted.
    ws2 = open_workspace(micro_ckpt, flags={"data.path": str(changed)}, accept_data_change=True)
    assert ws2.data_changed
    rows = np.arange(len(ws.train))
    a = references.identities(ws, source="retain", rows=rows, split=ws.train, seeds=[1])[0]
    b = references.identities(ws2, source="retain", rows=rows, split=ws2.train, seeds=[1])[0]
    assert a.key != b.key


def test_pool_references_do_not_depend_on_the_request(micro_ckpt: Path) -> None:
    """Pool references train on held-out pool rows only: one identity for every request, and
    disjoint from the audit's evidence rows."""
    ws = open_workspace(micro_ckpt)
    keys = []
    for forget in (np.arange(0, 600), np.arange(600, 1200)):
        split, rows = references.training_rows(ws, "pool", ws.retain_rows(forget))
        keys.append(
            references.identities(ws, source="pool", rows=rows, split=split, seeds=[1])[0].key
        )
        assert split is ws.heldout and not np.intersect1d(rows, ws.evidence_rows()).size
    assert keys[0] == keys[1]


def test_worker_path_is_bit_identical_to_in_process(micro_ckpt: Path, tmp_path: Path) -> None:
    """A worker re-reads the job from JSON and the data from disk; its weights equal the
    in-process ones bit for bit (compared by tensor hash: safetensors files themselves are not
    byte-reproducible because their metadata map is written in a random order)."""
    ws = open_workspace(micro_ckpt)
    _, seq, _ = _refs(ws, tmp_path / "seq", seeds=[11])
    rows = np.arange(0, len(ws.train), 10)
    identity = references.identities(ws, source="retain", rows=rows, split=ws.train, seeds=[11])[0]
    job = references.Job(
        spec=ws.spec,
        split=ws.train.name,
        rows=rows,
        identity=identity,
        cache_dir=tmp_path / "worker",
        checkpoint=micro_ckpt,
        precision=CPU,
        allow_plugin=False,
    )
    np.save(tmp_path / "rows.npy", rows, allow_pickle=False)
    (tmp_path / "job.json").write_text(job.to_json(tmp_path / "rows.npy"))
    assert ref_worker.main([str(tmp_path / "job.json")]) == 0
    checkpoint, problem, _ = references.verify(tmp_path / "worker", identity)
    assert problem is None and checkpoint is not None
    assert references.weights_sha256(checkpoint.tensors) == seq[0].weights_sha256


def test_worker_reports_bad_input_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.json").write_text("{}")
    assert ref_worker.main([str(tmp_path / "job.json")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_parallel_jobs_match_sequential(micro_ckpt: Path, tmp_path: Path) -> None:
    """--jobs 2 (two subprocesses, cores/2 torch threads each) gives bit for bit the weights of
    a sequential run with the same thread count. (With another thread count CPU kernels may
    split reductions differently: then the weights agree to float32 rounding only, which is
    why each sidecar records its thread count.)"""
    import torch

    ws = open_workspace(micro_ckpt)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(references.worker_threads(2))
        _, seq, _ = _refs(ws, tmp_path / "seq", seeds=[21, 22, 23])
    finally:
        torch.set_num_threads(before)
    _, par, _ = _refs(ws, tmp_path / "par", seeds=[21, 22, 23], jobs=2)
    assert [r.weights_sha256 for r in par] == [r.weights_sha256 for r in seq]
    assert all(r.status == "trained" for r in par)
    assert {r.threads for r in par} == {references.worker_threads(2)}


def test_auto_never_goes_below_the_minimum_for_a_pass() -> None:
    """K=1 can never PASS (no negative controls), so auto picks 8, 4 or 2, or stops up front."""

    def choose(per: float, budget: float, cached: int = 0, jobs: int = 1) -> ref_budget.Plan:
        return ref_budget.choose(
            None,
            cached=lambda k: min(k, cached),
            seconds_per_reference=lambda: per,
            budget_minutes=budget,
            jobs=jobs,
        )

    assert choose(60, 10).k == 8
    assert choose(60, 5).k == 4
    assert choose(60, 3).k == 2
    assert choose(60, 2.5, cached=1).k == 2 and choose(60, 2.5, cached=1).to_train == 1
    assert choose(60, 5, jobs=2).k == 8  # 4 rounds of 2 parallel references
    short = choose(60, 1.5)
    assert short.k == 0 and not short.fits
    assert "\n" not in short.reason and "--budget 3" in short.reason
    assert all(choose(per, 1).k in (0, 2, 4, 8) for per in (1, 10, 31, 59, 61, 200))


def test_step_timing_excludes_warm_up_and_uses_the_smaller_clock(micro_ckpt: Path) -> None:
    ws = open_workspace(micro_ckpt)
    rows = np.arange(1000)
    timing = ref_budget.measure_steps(
        ws, split=ws.train, rows=rows, precision=CPU, warmup=1, steps=2
    )
    assert timing.steps_timed == 2
    assert timing.steps_per_reference == 4 * ws.spec.recipe.epochs  # ceil(1000 / 256) per epoch
    assert timing.seconds_per_step == min(timing.cpu_per_step, timing.wall_per_step) > 0
    line = ref_budget.describe(
        ref_budget.Plan(2, 0, 1, timing.seconds_per_reference, "requested"), timing
    )
    assert line.startswith("references: estimate") and "\n" not in line


def test_audit_json_lists_reference_hashes_and_survives_tampering(
    micro_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """The JSON names each reference by identity and hashes (an auditor can recompute them);
    a forged cache is rebuilt with a warning and the verdict is the honest one."""
    warnings: list[str] = []

    def audit() -> dict:
        report = run_audit(
            AuditRequest(
                ckpt=micro_ckpt,
                manifest=sample_dir / "forget_random10.txt",
                refs=2,
                cache_dir=tmp_path,
                n_boot=50,
            ),
            precision=CPU,
            on_warning=warnings.append,
        )
        return to_json(report)

    honest = audit()
    listed = honest["inputs"]["references"]
    assert len(listed) == 2 and honest["timing"]["references_trained"] == 2
    for entry in listed:
        weights = tmp_path / f"{entry['key']}.safetensors"
        assert sha256_file(weights) == entry["sha256"] and len(entry["weights_sha256"]) == 64
        assert "path" not in json.dumps(entry["identity"])
    for entry in listed:
        shutil.copyfile(micro_ckpt, tmp_path / f"{entry['key']}.safetensors")
    forged = audit()
    assert forged["timing"]["references_trained"] == 2 and len(warnings) == 2
    assert sum("rebuilt" in note for note in forged["notes"]) == 2
    assert forged["verdict"] == honest["verdict"]
    assert [r["weights_sha256"] for r in forged["inputs"]["references"]] == [
        r["weights_sha256"] for r in listed
    ]
    again = audit()  # cached now: the honest JSON again, apart from timing and file hashes
    assert again["timing"]["references_trained"] == 0 and len(warnings) == 2
    for result in (honest, again):
        result.pop("timing")
        for entry in result["inputs"]["references"]:
            entry.pop("sha256")  # a rewritten safetensors file has other bytes, same tensors
    assert json.dumps(again, sort_keys=True) == json.dumps(honest, sort_keys=True)


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--ref-source", "everything"]])
def test_bad_reference_options_are_input_errors(
    argv: list[str], micro_ckpt: Path, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run(
        [
            "audit",
            "--ckpt",
            str(micro_ckpt),
            "--forget",
            str(sample_dir / "forget_random10.txt"),
            *argv,
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1


def test_request_validates_reference_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^jobs must be at least 1") as info:
        AuditRequest(ckpt=tmp_path, manifest=tmp_path, jobs=0)
    assert info.value.message_for(FLAGS).startswith("--jobs must be at least 1")


@pytest.mark.slow
def test_forged_references_cannot_make_the_original_pass(
    sample_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """Issue 11's forgery end to end: cached references replaced by copies of the original
    model made the original PASS (exit 0). Now they are rebuilt and the original is FAIL-LEAK."""
    manifest = sample_dir / "forget_random10.txt"

    def audit() -> dict:
        report = run_audit(
            AuditRequest(
                ckpt=sample_ckpt, manifest=manifest, refs=2, cache_dir=tmp_path, n_boot=200
            ),
            precision=CPU,
            on_warning=lambda _: None,
        )
        return to_json(report)

    honest = audit()
    for entry in honest["inputs"]["references"]:
        shutil.copyfile(sample_ckpt, tmp_path / f"{entry['key']}.safetensors")
    forged = audit()
    assert forged["verdict"]["status"] == "FAIL-LEAK" and forged["exit_code"] == 3
    assert forged["verdict"] == honest["verdict"]
