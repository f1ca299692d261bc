"""Issue 12: nothing a command writes can destroy an input, data identity is strict, deleted IDs
stay secret. Each test names the issue item it pins down; each failed before its fix.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unforget import cli
from unforget.config.spec import DataSpec
from unforget.data.splits import load_split
from unforget.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    DataError,
    ManifestError,
    OutputBusyError,
)
from unforget.io.cache import (
    KEY_TRAINED_ON,
    Deleted,
    prune,
    references_dir,
    trained_on,
)
from unforget.io.checkpoint import (
    KEY_LEDGER,
    KEY_PROVENANCE,
    KEY_SPEC,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from unforget.io.fileio import atomic_write, lock_path, sha256_file
from unforget.io.ledger import (
    SCHEME_HMAC,
    LedgerKeyError,
    covered,
    entries_from_json,
    entries_summary,
    entries_to_json,
    hash_id,
    load_key,
    load_or_create_key,
    new_entry,
    using_key_file,
)
from unforget.io.manifest import read_manifest
from unforget.runtime.device import precision_for, resolve_device
from unforget.runtime.progress import PlainProgress, Tick
from unforget.workflows.unlearn import ApplyRequest, apply, receipt_path
from unforget.workflows.workspace import deleted_rows, open_workspace

CPU = precision_for(resolve_device("cpu"))


def run(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def fmnist(sample_dir: Path) -> Path:
    return sample_dir / "fashion-mnist"


@pytest.fixture()
def ckpt(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint with an absolute data path (safe to move)."""
    meta = read_metadata(tiny_ckpt)
    spec = json.loads(meta[KEY_SPEC])
    spec["data"]["path"] = str((tiny_ckpt.parent / spec["data"]["path"]).resolve())
    meta[KEY_SPEC] = json.dumps(spec)
    meta = {k: v for k, v in meta.items() if k.startswith("unforget.") and k != "unforget.format"}
    out = tmp_path / "model.safetensors"
    save_checkpoint(out, load_checkpoint(tiny_ckpt).tensors, metadata=meta)
    return out


# --- item 1: sidecar naming -------------------------------------------------------------------


@pytest.mark.parametrize("force", [True, False])
def test_sidecar_name_of_out_never_deletes_an_input_checkpoint(
    ckpt: Path, sample_dir: Path, force: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """``m.pgu.safetensors`` as --ckpt with --out m.safetensors: the output's PGU sidecar name is
    the input. Refused with exit 2 with or without --force, and the message never says --force."""
    source = ckpt.with_name("m.pgu.safetensors")
    shutil.copyfile(ckpt, source)
    before = sha256_file(source)
    argv = ["apply", "--ckpt", source, "--forget", sample_dir / "forget_random10.txt"]
    argv += ["--method", "neggrad", "--out", ckpt.with_name("m.safetensors")]
    code, _, err = run(argv + (["--force"] if force else []), capsys)
    assert code == EXIT_BAD_INPUT
    line = one_line(err)
    assert "PGU statistics file of --out" in line and "--ckpt" in line
    assert "--force" not in line
    assert source.is_file() and sha256_file(source) == before
    assert not ckpt.with_name("m.safetensors").exists()


# --- item 2: outputs never name inputs --------------------------------------------------------


@pytest.mark.parametrize("which", ["ckpt", "forget", "hardlink", "data", "receipt"])
def test_audit_outputs_never_name_an_input(
    ckpt: Path, sample_dir: Path, tmp_path: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "forget.txt"
    shutil.copyfile(sample_dir / "forget_random10.txt", manifest)
    receipt = receipt_path(ckpt)
    receipt.write_text(json.dumps({"input_path": str(ckpt), "output_sha256": ""}))
    hardlink = tmp_path / "scores.csv"
    os.link(ckpt, hardlink)
    target = {
        "ckpt": ckpt,
        "forget": manifest,
        "hardlink": hardlink,  # another name for the checkpoint: caught by inode
        "data": sample_dir / "fashion-mnist" / "extra.csv",
        "receipt": receipt,
    }[which]
    hashes = {p: sha256_file(p) for p in (ckpt, manifest, receipt)}
    argv = ["audit", "--ckpt", ckpt, "--forget", manifest, "--refs", "0", "--csv", target]
    code, _, err = run(argv, capsys)
    assert code == EXIT_BAD_INPUT
    assert "--csv" in one_line(err)
    assert {p: sha256_file(p) for p in hashes} == hashes
    assert not (sample_dir / "fashion-mnist" / "extra.csv").exists()


def test_apply_out_never_names_the_manifest_or_a_data_file(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "ids.txt"
    shutil.copyfile(sample_dir / "forget_random10.txt", manifest)
    base = ["apply", "--ckpt", ckpt, "--forget", manifest, "--force"]
    code, _, err = run([*base, "--out", manifest], capsys)
    assert code == EXIT_BAD_INPUT and "--forget" in one_line(err)
    assert manifest.read_bytes() == (sample_dir / "forget_random10.txt").read_bytes()
    data = sample_dir / "fashion-mnist"
    before = sha256_file(data / "train.parquet")
    code, _, err = run([*base, "--out", data / "train.parquet"], capsys)
    assert code == EXIT_BAD_INPUT and "data folder" in one_line(err)
    assert sha256_file(data / "train.parquet") == before


# --- item 3: one writer per output, receipts hash the bytes written ---------------------------


def test_apply_fails_fast_while_another_run_holds_the_output_lock(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.safetensors"
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a concurrent `unforget apply` process holds
    try:
        argv = ["apply", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
        code, _, err = run([*argv, "--method", "neggrad", "--out", out, "--force"], capsys)
    finally:
        os.close(fd)
    assert code == EXIT_FAILURE
    assert "another unforget run is writing" in one_line(err)
    assert not out.exists() and not receipt_path(out).exists()


def test_concurrent_apply_force_to_one_out_keeps_receipt_and_checkpoint_consistent(
    ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """Two ``apply --force`` runs on one --out at once: each either finishes or stops with
    OutputBusyError, never interleaves; the receipt's hash is the checkpoint's on disk."""
    out = tmp_path / "out.safetensors"
    results: list[object] = []
    start = threading.Barrier(2)

    def worker(seed: int) -> None:
        request = ApplyRequest(
            ckpt=ckpt,
            manifest=sample_dir / "forget_random10.txt",
            method="neggrad",
            out=out,
            seed=seed,
            force=True,
        )
        start.wait()
        try:
            results.append(apply(request, precision=CPU))
        except OutputBusyError as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and any(not isinstance(r, Exception) for r in results)
    receipt = json.loads(receipt_path(out).read_text())
    assert receipt["output_sha256"] == sha256_file(out)
    assert not lock_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- item 4: null IDs -------------------------------------------------------------------------


def test_null_ids_in_the_data_are_refused(fmnist: Path, tmp_path: Path) -> None:
    table = pq.read_table(fmnist / "train.parquet")
    ids = table.column("id").to_pylist()
    ids[7] = None
    (tmp_path / "d").mkdir()
    pq.write_table(table.set_column(0, "id", pa.array(ids)), tmp_path / "d" / "train.parquet")
    shutil.copyfile(fmnist / "heldout.parquet", tmp_path / "d" / "heldout.parquet")
    with pytest.raises(DataError, match=r"1 empty \(null\) IDs \(first at row 7\)"):
        load_split(DataSpec(path=str(tmp_path / "d")), "train")


def test_train_with_null_ids_exits_2_with_one_line(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pq.read_table(fmnist / "train.parquet")
    ids = table.column("id").to_pylist()
    ids[0] = None
    (tmp_path / "d").mkdir()
    pq.write_table(table.set_column(0, "id", pa.array(ids)), tmp_path / "d" / "train.parquet")
    shutil.copyfile(fmnist / "heldout.parquet", tmp_path / "d" / "heldout.parquet")
    argv = ["train", "--data", tmp_path / "d", "--model", "mlp", "--out", tmp_path / "m.st"]
    code, _, err = run(argv, capsys)
    assert code == EXIT_BAD_INPUT and "null" in one_line(err)
    assert not (tmp_path / "m.st").exists()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ids.txt", "a\nNone\n"),
        ("ids.txt", "null\n"),
        ("ids.jsonl", '{"id": "a"}\n{"id": null}\n'),
        ("ids.csv", "id\na\nNaN\n"),
    ],
)
def test_null_ids_in_manifests_are_refused(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ManifestError, match=r"missing value|null"):
        read_manifest(path)


# --- items 5 and 6: fingerprint for foreign checkpoints and apply's output; duplicates -------


@pytest.fixture(scope="module")
def foreign(
    tiny_ckpt: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A checkpoint trained elsewhere (bare state dict, spec from --config), unlearned once with a
    manifest holding 3 repeated entries."""
    folder = tmp_path_factory.mktemp("foreign")
    bare = folder / "bare.safetensors"
    save_checkpoint(bare, load_checkpoint(tiny_ckpt).tensors, metadata={})
    config = folder / "run.toml"
    config.write_text(
        '[model]\nname = "mlp"\nkwargs = { hidden = [128] }\n'
        f'[data]\npath = "{sample_dir / "fashion-mnist"}"\n'
        "[recipe]\nepochs = 8\nbatch_size = 128\nlr = 0.003\n"
    )
    ids = list(read_manifest(sample_dir / "forget_random10.txt").ids[:60])
    manifest = folder / "ids.txt"
    manifest.write_text("\n".join([*ids, ids[0], ids[1], ids[0]]) + "\n")
    out = folder / "out.safetensors"
    request = ApplyRequest(ckpt=bare, manifest=manifest, method="neggrad", out=out, config=config)
    apply(request, precision=CPU)
    return {"bare": bare, "out": out, "config": config, "manifest": manifest}


def test_apply_output_of_a_foreign_checkpoint_records_a_fingerprint(
    foreign: dict[str, Path],
) -> None:
    spec = load_checkpoint(foreign["out"]).meta_json(KEY_SPEC)
    provenance = load_checkpoint(foreign["out"]).meta_json(KEY_PROVENANCE)
    receipt = json.loads(receipt_path(foreign["out"]).read_text())
    assert spec["train_fingerprint"].startswith("v2:")
    assert provenance["data_fingerprint"] == spec["train_fingerprint"]
    assert receipt["data_fingerprint"] == spec["train_fingerprint"]


def test_changed_labels_after_apply_are_caught(
    foreign: dict[str, Path], sample_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dir / "fashion-mnist", data)
    table = pq.read_table(data / "train.parquet")
    labels = table.column("label").to_numpy().copy()
    labels[5] = (labels[5] + 1) % 10
    index = table.schema.get_field_index("label")
    pq.write_table(
        table.set_column(index, table.schema.field("label"), pa.array(labels)),
        data / "train.parquet",
    )
    with pytest.raises(DataError, match="not the data this model was trained on"):
        open_workspace(foreign["out"], flags={"data.path": str(data)})


def test_receipt_counts_duplicate_ids(foreign: dict[str, Path]) -> None:
    receipt = json.loads(receipt_path(foreign["out"]).read_text())
    assert receipt["manifest_duplicates"] == 3
    assert receipt["manifest_count"] == 60


# --- item 7: every path checked before any work ------------------------------------------------


def test_config_naming_a_directory_exits_2(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["apply", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
    code, _, err = run([*argv, "--config", tmp_path, "--out", tmp_path / "o.st"], capsys)
    assert code == EXIT_BAD_INPUT and "is a directory" in one_line(err)


def test_data_path_naming_a_file_exits_2(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["apply", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
    argv += ["--data", sample_dir / "fashion-mnist" / "train.parquet", "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert code == EXIT_BAD_INPUT and "is a file" in one_line(err)


@pytest.mark.parametrize("command", ["apply", "train"])
def test_out_naming_a_directory_exits_2_before_any_work(
    command: str,
    ckpt: Path,
    sample_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import unforget.workflows.train
    import unforget.workflows.unlearn

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the paths were checked")

    monkeypatch.setattr(unforget.workflows.unlearn, "_run", no_work)
    monkeypatch.setattr(unforget.workflows.train, "fit", no_work)
    (tmp_path / "dir").mkdir()
    if command == "apply":
        argv = ["apply", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
    else:
        argv = ["train", "--data", sample_dir / "fashion-mnist", "--model", "mlp"]
    code, _, err = run([*argv, "--out", tmp_path / "dir", "--force"], capsys)
    assert code == EXIT_BAD_INPUT and "is a directory" in one_line(err)


def test_out_in_an_unwritable_place_exits_2_before_any_work(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where --out's folder would have to be
    argv = ["apply", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
    code, _, err = run([*argv, "--out", blocker / "sub" / "o.safetensors"], capsys)
    assert code == EXIT_BAD_INPUT and "not a folder" in one_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_out_in_a_read_only_folder_exits_2_before_any_work(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        argv = ["apply", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
        code, _, err = run([*argv, "--out", folder / "o.safetensors"], capsys)
    finally:
        folder.chmod(0o755)
    assert code == EXIT_BAD_INPUT and "cannot write" in one_line(err)


def test_missing_original_exits_2_before_any_work(
    ckpt: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "--ckpt", ckpt, "--forget", sample_dir / "forget_random10.txt"]
    code, _, err = run([*argv, "--original", tmp_path / "nope.safetensors"], capsys)
    assert code == EXIT_BAD_INPUT and "--original" in one_line(err)


# --- item 8: kills and Ctrl-C -----------------------------------------------------------------


def test_a_later_write_removes_temp_files_left_by_a_killed_run(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    stale = tmp_path / ".m.safetensors.k3x9_a0z.tmp"  # what mkstemp named it before the kill
    other = tmp_path / ".m.safetensors.receipt.json.abcdefgh.tmp"  # another target's: kept
    stale.write_bytes(b"partial")
    other.write_bytes(b"partial")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert not stale.exists() and other.exists()
    assert not lock_path(target).exists()


def test_orphan_checkpoint_without_receipt_is_replaced_by_a_rerun(
    ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """A kill between checkpoint and receipt: the re-run (no --force) completes the job."""
    out = tmp_path / "o.safetensors"
    request = ApplyRequest(
        ckpt=ckpt, manifest=sample_dir / "forget_random10.txt", method="neggrad", out=out
    )
    apply(request, precision=CPU)
    receipt_path(out).unlink()  # the state a kill after the checkpoint's rename leaves
    result = apply(request, precision=CPU)
    assert result.receipt is not None or result.already_applied is None
    assert json.loads(receipt_path(out).read_text())["output_sha256"] == sha256_file(out)


def test_ctrl_c_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import unforget.workflows.unlearn

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(unforget.workflows.unlearn, "apply", interrupted)
    code, _, err = run(["apply", "--ckpt", "x", "--forget", "y", "--out", tmp_path / "o"], capsys)
    assert code == 130
    assert "interrupted" in one_line(err)


# --- item 9: keyed ledger ---------------------------------------------------------------------


def test_ledger_entries_are_keyed_and_cannot_be_enumerated_without_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("ab" * 32)
    ids = [str(i) for i in range(600)]
    with using_key_file(key_file):
        entry = new_entry(ids[:60], manifest_sha256="m", method="x", time="t")
        assert all(covered([entry], ids[:60])) and not any(covered([entry], ids[60:]))
    raw = json.dumps(entries_to_json([entry]))
    assert entry.scheme == SCHEME_HMAC and '"salt"' not in raw
    # What a brute force without the key tries: every ID hashed with any salt-like value found.
    guesses = {hash_id(i, salt=s) for i in ids for s in ("", entry.key_id)}
    assert not guesses & set(entry.id_hashes)
    other = tmp_path / "other"
    other.write_text("cd" * 32)
    with using_key_file(other), pytest.raises(LedgerKeyError, match="another ledger key"):
        covered([entry], ids[:1])


def test_legacy_salted_ledgers_stay_readable() -> None:
    salt = "00" * 16
    raw = [
        {
            "manifest_sha256": "m",
            "count": 2,
            "salt": salt,
            "id_hashes": sorted(hash_id(i, salt=salt) for i in ("a", "b")),
            "method": "neggrad",
            "time": "t",
            "output_sha256": None,
        }
    ]
    (entry,) = entries_from_json(raw)
    assert entry.legacy
    assert covered([entry], ["a", "b", "c"]) == [True, True, False]


def test_a_named_missing_key_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNFORGET_LEDGER_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(LedgerKeyError, match="UNFORGET_LEDGER_KEY_FILE"):
        load_or_create_key()
    assert LedgerKeyError.exit_code == EXIT_BAD_INPUT


def test_first_use_creates_a_private_default_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNFORGET_CONFIG", str(tmp_path / "cfg"))
    key, created = load_or_create_key()
    assert created and key.path == tmp_path / "cfg" / "ledger.key"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    again, created_again = load_or_create_key()
    assert not created_again and again.secret == key.secret == load_key().secret


def test_inspect_check_ids_uses_the_key(
    foreign: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["inspect", foreign["out"], "--check-ids", foreign["manifest"], "--json"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    report = json.loads(out)
    assert len(report["id_check"]["covered"]) == 60 and not report["id_check"]["not_covered"]
    assert report["ledger"][0]["scheme"] == SCHEME_HMAC and not report["ledger"][0]["legacy"]
    wrong = tmp_path / "wrong.key"
    wrong.write_text("ef" * 32)
    code, _, err = run([*argv, "--ledger-key", wrong], capsys)
    assert code == EXIT_BAD_INPUT and "another ledger key" in one_line(err)


def test_exported_ledger_summary_holds_no_hashes(foreign: dict[str, Path]) -> None:
    entries = entries_from_json(load_checkpoint(foreign["out"]).meta_json(KEY_LEDGER))
    text = json.dumps(entries_summary(entries))
    assert not any(h in text for e in entries for h in e.id_hashes)
    assert "salt" not in text and '"count": 60' in text


# --- item 10: cache root and prune -------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache root of this test's own: prune must never touch the caller's real cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("UNFORGET_CACHE", str(root))
    return root


def test_prune_removes_references_trained_on_deleted_rows(
    foreign: dict[str, Path], own_cache: Path
) -> None:
    deleted = deleted_rows(foreign["out"])
    assert len(deleted.rows) == 60
    fingerprint = next(iter(deleted.fingerprints))
    folder = references_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"w": next(iter(load_checkpoint(foreign["bare"]).tensors.values()))[:2]}
    every = np.arange(6000)
    kept_rows = np.setdiff1d(every, deleted.rows)
    files = {
        "stale": (folder / "stale.safetensors", trained_on(fingerprint, 6000, every)),
        "fresh": (folder / "fresh.safetensors", trained_on(fingerprint, 6000, kept_rows)),
        "other": (folder / "other.safetensors", trained_on("v2:other", 6000, every)),
    }
    for path, record in files.values():
        save_checkpoint(path, tensors, metadata={KEY_TRAINED_ON: record}, force=True)
    save_checkpoint(folder / "unknown.safetensors", tensors, metadata={}, force=True)
    datasets = own_cache / "datasets" / "x"
    datasets.mkdir(parents=True, exist_ok=True)
    result = prune([deleted])
    names = {p.name for p in result.removed}
    assert {"stale.safetensors", "unknown.safetensors", "datasets"} <= names
    assert files["fresh"][0].exists() and files["other"][0].exists()
    assert not files["stale"][0].exists() and not datasets.exists()
    for path, _ in files.values():
        path.unlink(missing_ok=True)


def test_prune_dry_run_removes_nothing(own_cache: Path) -> None:
    import torch

    folder = references_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "old.safetensors"
    save_checkpoint(path, {"w": torch.zeros(1)}, metadata={}, force=True)
    nothing = Deleted(fingerprints=frozenset(), rows=np.zeros(0, dtype=np.int64))
    result = prune([nothing], dry_run=True)
    assert path in result.removed and path.exists()
    path.unlink()


def test_datasets_conversions_live_under_the_cache_root(tmp_path: Path, own_cache: Path) -> None:
    (tmp_path / "d").mkdir()
    csv = "id,x,label\n" + "".join(f"r{i},{i},{i % 2}\n" for i in range(8))
    (tmp_path / "d" / "train.csv").write_text(csv)
    spec = DataSpec(path=str(tmp_path / "d"), input_columns=("x",))
    load_split(spec, "train")
    root = own_cache / "datasets"
    assert any(p.suffix == ".arrow" for p in root.rglob("*"))


# --- item 11: quiet libraries and plain progress ---------------------------------------------


def test_plain_progress_prints_one_line_per_interval() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=30.0, clock=lambda: now[0])
    for step in range(100):
        now[0] = step * 1.0  # one step per simulated second
        progress(Tick(task="train", completed=step, total=100, fields={"loss": 0.5}))
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0].startswith("unforget: train: 30/100  loss 0.5") and lines[0].endswith("\n")
    # a loss not read yet (a loop reads it on the host only at its checks) is left out, not
    # printed as "loss nan", which would read as a diverged run
    now[0] = 200.0
    progress(Tick(task="apply", completed=47, total=633, fields={"loss": float("nan")}))
    assert lines[-1] == "unforget: apply: 47/633 (200 s elapsed)\n"
    assert Tick("t", 1, 2, {"loss": float("nan"), "lr": 0.001}).numbers() == "lr 0.001"
    from unforget.cli.app import _progress

    with _progress(True) as tick:  # pytest's stderr is not a terminal
        assert isinstance(tick, PlainProgress)


def test_quiet_or_non_terminal_runs_disable_datasets_progress_bars(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    hf_tqdm = importlib.import_module("datasets.utils.tqdm")  # the module, not its tqdm class

    # As for a user without HF_DATASETS_DISABLE_PROGRESS_BARS (the test session sets it).
    monkeypatch.setattr(hf_tqdm, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(hf_tqdm, "_hf_datasets_progress_bars_disabled", False)
    assert not hf_tqdm.are_progress_bars_disabled()
    run(["methods", "--json"], capsys)
    assert hf_tqdm.are_progress_bars_disabled()


# --- crash consistency: SIGKILL at random points ----------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_points_never_harms_input_or_output(
    ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    """Kill ``apply`` (a real process) at several random moments of a run: the input keeps its
    SHA-256, the final output name holds either nothing or a complete checkpoint, and the same
    command run again succeeds with a receipt that matches its checkpoint."""
    import subprocess
    import sys
    import time

    out = tmp_path / "out" / "o.safetensors"
    command = [sys.executable, "-m", "unforget", "apply", "--ckpt", str(ckpt), "--quiet"]
    command += ["--forget", str(sample_dir / "forget_random10.txt"), "--method", "neggrad"]
    command += ["--out", str(out), "--force"]
    before = sha256_file(ckpt)
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    duration = time.monotonic() - start  # only to spread the kill moments over one run
    for delay in np.random.default_rng(12).uniform(0.2, duration, size=4):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        process.kill()
        process.wait()
        assert sha256_file(ckpt) == before
        if out.exists():
            load_checkpoint(out)  # complete, readable safetensors (never a torn file)
            if receipt_path(out).exists():
                receipt = json.loads(receipt_path(out).read_text())
                assert receipt["output_sha256"] == sha256_file(out)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(receipt_path(out).read_text())["output_sha256"] == sha256_file(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, receipt_path(out).name]
    assert sha256_file(ckpt) == before
