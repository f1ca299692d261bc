"""Deletion manifests (DESIGN §3): formats, de-duplication, and every bad case as one clear error.

A manifest is UTF-8 text with one ID per line (blank lines and ``#`` comments ignored, whitespace
trimmed), or CSV/JSONL with an ``id`` column. IDs are validated against the training split:
held-out IDs and unknown IDs are reported with their count and the first few, in one error.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from unforget.config.spec import DataSpec
from unforget.data.splits import load_split
from unforget.errors import EXIT_BAD_INPUT, ManifestError
from unforget.io.manifest import canonical_ids, read_manifest, resolve_rows

TRAIN = {f"t{i}": i for i in range(20)}
HELDOUT = {f"h{i}": i for i in range(10)}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_text_manifest_ignores_comments_blank_lines_and_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.txt", "# request 42\n\n  t3 \n\tt1\n# t2 is a comment\n\nt0\r\n")
    manifest = read_manifest(path)
    assert manifest.ids == ("t3", "t1", "t0")
    assert manifest.duplicates == 0
    assert manifest.path == path


def test_utf8_bom_is_not_part_of_the_first_id(tmp_path: Path) -> None:
    """Windows editors write a BOM; ``\\ufeffa`` must still be the ID ``a``."""
    path = write(tmp_path, "ids.txt", "\ufeffa\nb\n".encode())
    assert read_manifest(path).ids == ("a", "b")


def test_duplicates_are_removed_in_first_seen_order_and_counted(tmp_path: Path) -> None:
    """5 lines, 3 distinct IDs -> 2 duplicates; order is the order of first appearance."""
    path = write(tmp_path, "ids.txt", "b\na\nb\n  a\nc\n")
    manifest = read_manifest(path)
    assert manifest.ids == ("b", "a", "c")
    assert manifest.duplicates == 2


def test_csv_with_id_column(tmp_path: Path) -> None:
    path = write(tmp_path, "req.csv", "name, id ,reason\nx, t5 ,gdpr\ny,t7,\nz,,empty id\nw,t5,\n")
    manifest = read_manifest(path)
    assert manifest.ids == ("t5", "t7")
    assert manifest.duplicates == 1


def test_jsonl_with_id_field(tmp_path: Path) -> None:
    path = write(tmp_path, "req.jsonl", '{"id": "t1", "who": "a"}\n\n{"id": 7}\n{"id": " t2 "}\n')
    assert read_manifest(path).ids == ("t1", "7", "t2")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("req.csv", "name,reason\nx,gdpr\n", "'id' column"),
        ("req.csv", "", "'id' column"),
        ("req.jsonl", '{"id": "a"}\n{"name": "b"}\n', "line 2 has no 'id' field"),
        ("req.jsonl", '{"id": "a"}\nnot json\n', "line 2 is not JSON"),
        ("ids.txt", "", "lists no IDs"),
        ("ids.txt", "# only comments\n\n   \n# here\n", "lists no IDs"),
        ("ids.txt", b"ok\n\xff\xfe\xfa\n", "not UTF-8"),
    ],
)
def test_bad_manifests_are_manifest_errors(
    tmp_path: Path, name: str, content: str | bytes, needle: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ManifestError, match=needle) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.txt")


def test_sha256_is_the_hash_of_the_file_bytes_and_stable(tmp_path: Path) -> None:
    """The ledger keys requests by the manifest's SHA-256: same bytes -> same hash, wherever the
    file lives; any byte changed (even a comment) -> a different request."""
    content = b"# req\nt1\nt2\n"
    a = read_manifest(write(tmp_path, "a.txt", content))
    (tmp_path / "sub").mkdir()
    b = read_manifest(write(tmp_path / "sub", "b.txt", content))
    c = read_manifest(write(tmp_path, "c.txt", b"# req 2\nt1\nt2\n"))
    assert a.sha256 == b.sha256 == hashlib.sha256(content).hexdigest()
    assert a.ids == c.ids and a.sha256 != c.sha256


def test_resolve_rows_maps_ids_to_training_rows() -> None:
    rows = resolve_rows(("t4", "t0", "t19"), train_index=TRAIN, heldout_index=HELDOUT, path=Path())
    assert rows.dtype == np.int64
    assert rows.tolist() == [4, 0, 19]


def test_unknown_ids_listed_with_count_and_first_five() -> None:
    ids = (*(f"ghost{i}" for i in range(8)), "t1")
    with pytest.raises(ManifestError) as info:
        resolve_rows(ids, train_index=TRAIN, heldout_index=HELDOUT, path=Path("req.txt"))
    message = str(info.value)
    assert "8 IDs are not in the training split" in message
    assert "'ghost0', 'ghost1', 'ghost2', 'ghost3', 'ghost4', ..." in message
    assert "ghost5" not in message
    assert "req.txt" in message


def test_heldout_ids_are_refused_and_reported_with_unknown_ones_in_one_error() -> None:
    """Held-out rows were never trained on, so there is nothing to forget; both problems are
    reported together so the user fixes the manifest once."""
    with pytest.raises(ManifestError) as info:
        resolve_rows(
            ("h2", "t1", "h3", "zz"), train_index=TRAIN, heldout_index=HELDOUT, path=Path()
        )
    message = str(info.value)
    assert "2 IDs are in the held-out split" in message and "'h2', 'h3'" in message
    assert "1 IDs are not in the training split (first: 'zz')" in message
    assert "..." not in message


def test_canonical_ids_for_integer_id_columns() -> None:
    """With integer IDs "007", "7" and " 7" name the same row and collapse to one."""
    assert canonical_ids(("007", "7", "12"), integer=True, path=Path()) == ("7", "12")
    assert canonical_ids(("007", "7"), integer=False, path=Path()) == ("007", "7")
    with pytest.raises(ManifestError, match=r"2 IDs are not integers.*'x1', '3.5'"):
        canonical_ids(("x1", "3", "3.5"), integer=True, path=Path())


def test_integer_id_dataset_end_to_end(tmp_path: Path) -> None:
    """A CSV data set with integer IDs: a manifest writing "0007" resolves to the row of ID 7."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(
        "id,x,label\n" + "".join(f"{i},{i / 10},{i % 2}\n" for i in range(3, 13))
    )
    (data / "heldout.csv").write_text("id,x,label\n100,0.5,1\n101,0.7,0\n")
    spec = DataSpec(path=str(data), format="csv", input_columns=("x",))
    train, heldout = load_split(spec, "train"), load_split(spec, "heldout")
    assert train.id_is_int and train.ids[:2] == ("3", "4")
    manifest = read_manifest(write(tmp_path, "ids.txt", "0007\n12\n7\n"))
    ids = canonical_ids(manifest.ids, integer=train.id_is_int, path=manifest.path)
    rows = resolve_rows(
        ids, train_index=train.index(), heldout_index=heldout.index(), path=manifest.path
    )
    assert [train.ids[r] for r in rows] == ["7", "12"]
    with pytest.raises(ManifestError, match="held-out split"):
        resolve_rows(
            canonical_ids(("0100",), integer=True, path=Path()),
            train_index=train.index(),
            heldout_index=heldout.index(),
            path=Path(),
        )


def test_shipped_manifests_are_valid(sample_dir: Path) -> None:
    """The sample manifests name 600 distinct training IDs each (10% of 6,000)."""
    for name in ("forget_random10.txt", "forget_class_sandal.txt"):
        manifest = read_manifest(sample_dir / name)
        assert len(manifest.ids) == 600 and manifest.duplicates == 0
        assert all(i.startswith("fmnist-train-") for i in manifest.ids)
