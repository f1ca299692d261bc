"""Data on disk (DESIGN §3): every local format, IDs and labels per split, the reference/evidence
split of held-out data, the training-data fingerprint, and loaders whose rows map back to IDs."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from unforget.cli.app import FLAGS
from unforget.config.spec import DataSpec
from unforget.data.loaders import make_loader, source, to_device
from unforget.data.splits import (
    Split,
    detect_format,
    fingerprint,
    fingerprint_matches,
    input_info,
    legacy_fingerprint,
    load_split,
    reference_mask,
)
from unforget.errors import DataError
from unforget.workflows.workspace import open_workspace

CPU = torch.device("cpu")
FEATURES = ("f0", "f1", "f2", "f3")


@pytest.fixture(scope="module")
def fmnist(sample_dir: Path) -> DataSpec:
    return DataSpec(path=str(sample_dir / "fashion-mnist"))


def quadrant_features(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 4) float: mean intensity of each 14x14 quadrant, in [0, 1]."""
    q = images.reshape(len(images), 2, 14, 2, 14).mean(axis=(2, 4)) / 255.0
    return q.reshape(len(images), 4).round(6)


@pytest.fixture(scope="module")
def toy(fmnist: DataSpec) -> dict[str, dict[str, np.ndarray]]:
    """A small tabular set made from real Fashion-MNIST rows: integer IDs, 4 numeric features."""
    out = {}
    for split, start, n in (("train", 1000, 90), ("heldout", 5000, 40)):
        rows = load_split(fmnist, split).dataset.with_format("numpy")[:n]
        feats = quadrant_features(rows["image"])
        out[split] = {
            "id": np.arange(start, start + n, dtype=np.int64),
            "label": rows["label"].astype(np.int64),
            **{f: feats[:, i] for i, f in enumerate(FEATURES)},
        }
    return out


def write_toy(folder: Path, fmt: str, toy: dict[str, dict[str, np.ndarray]]) -> Path:
    import datasets

    folder.mkdir(parents=True)
    if fmt == "arrow":
        datasets.DatasetDict(
            {
                s: datasets.Dataset.from_dict({k: v.tolist() for k, v in c.items()})
                for s, c in toy.items()
            }
        ).save_to_disk(str(folder))
        return folder
    for split, columns in toy.items():
        table = pa.table(columns)
        if fmt == "parquet":
            pq.write_table(table, folder / f"{split}.parquet")
        elif fmt == "csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, folder / f"{split}.csv")
        else:
            lines = [
                "{" + ", ".join(f'"{k}": {v[i]}' for k, v in columns.items()) + "}"
                for i in range(len(columns["id"]))
            ]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_sample_parquet_splits(fmnist: DataSpec) -> None:
    train, heldout = load_split(fmnist, "train"), load_split(fmnist, "heldout")
    assert (len(train), len(heldout)) == (6000, 4000)
    assert not train.id_is_int and train.ids[0] == "fmnist-train-00001"
    assert not set(train.ids) & set(heldout.ids)
    assert train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [600] * 10  # stratified
    assert train.index()["fmnist-train-00001"] == 0
    info = input_info(train, fmnist)
    assert (info.kind, info.shape, info.num_classes) == ("image", (1, 28, 28), 10)
    assert info.class_names[5] == "Sandal"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "arrow"])
def test_tabular_data_in_every_format(
    fmt: str, toy: dict[str, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    """The same table written as csv/jsonl/parquet/arrow reads back with the same IDs, labels and
    feature batches, and the loader's ``rows`` map each sample back to its ID."""
    folder = write_toy(tmp_path / fmt, fmt, toy)
    spec = DataSpec(path=str(folder), format=fmt, input_columns=FEATURES)  # type: ignore[arg-type]
    train, heldout = load_split(spec, "train"), load_split(spec, "heldout")
    assert train.id_is_int
    assert train.ids == tuple(str(i) for i in toy["train"]["id"])
    assert heldout.ids == tuple(str(i) for i in toy["heldout"]["id"])
    assert np.array_equal(train.labels, toy["train"]["label"])
    info = input_info(train, spec)
    assert (info.kind, info.shape) == ("tabular", (4,))
    rows = np.array([7, 0, 89, 42])
    x, y, r = next(
        iter(
            make_loader(
                source(train, rows, spec=spec, info=info),
                batch_size=4,
                shuffle=False,
                seed=0,
                device=CPU,
            )
        )
    )
    assert x.dtype == torch.float32 and x.shape == (4, 4)
    expected = np.stack([toy["train"][f][rows] for f in FEATURES], axis=1)
    assert np.allclose(x.numpy(), expected, atol=1e-6)
    assert r.tolist() == rows.tolist() and y.tolist() == toy["train"]["label"][rows].tolist()
    assert [train.ids[i] for i in r] == [str(toy["train"]["id"][i]) for i in rows]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_format_auto_detection(
    fmt: str, toy: dict[str, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    folder = write_toy(tmp_path / fmt, fmt, toy)
    assert detect_format(folder) == fmt
    spec = DataSpec(path=str(folder), input_columns=FEATURES)
    assert len(load_split(spec, "train")) == 90


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_format_auto_detection_of_text_formats(
    fmt: str, toy: dict[str, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    folder = write_toy(tmp_path / fmt, fmt, toy)
    assert detect_format(folder) == fmt


def test_a_list_column_is_one_tabular_input(tmp_path: Path) -> None:
    """One fixed-length list column of floats is a (D,) feature vector per sample."""
    (tmp_path / "d").mkdir()
    for split, ids in (("train", ["a", "b", "c"]), ("heldout", ["z"])):
        feats = [[float(i), float(i) / 2, -1.0] for i in range(len(ids))]
        pq.write_table(
            pa.table({"id": ids, "x": feats, "label": [i % 2 for i in range(len(ids))]}),
            tmp_path / "d" / f"{split}.parquet",
        )
    spec = DataSpec(path=str(tmp_path / "d"), input_columns=("x",))
    train = load_split(spec, "train")
    info = input_info(train, spec)
    assert (info.kind, info.shape, info.num_classes) == ("tabular", (3,), 2)
    x, _, _ = next(
        iter(
            make_loader(
                source(train, np.arange(3), spec=spec, info=info),
                batch_size=8,
                shuffle=False,
                seed=0,
                device=CPU,
            )
        )
    )
    assert x.tolist() == [[0.0, 0.0, -1.0], [1.0, 0.5, -1.0], [2.0, 1.0, -1.0]]


def test_image_batches_are_uint8_until_the_device(fmnist: DataSpec) -> None:
    """Batches stay uint8 on the host (4x smaller copies); ``to_device`` scales to [0, 1]."""
    train = load_split(fmnist, "train")
    info = input_info(train, fmnist)
    rows = np.array([5, 17, 3, 4242, 5999])
    loader = make_loader(
        source(train, rows, spec=fmnist, info=info), batch_size=2, shuffle=False, seed=0, device=CPU
    )
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    x, y, r = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 28, 28)
    assert y.dtype == torch.int64 and r.tolist() == [5, 17]
    assert y.tolist() == train.labels[[5, 17]].tolist()
    raw = np.asarray(train.dataset.with_format("numpy")[5]["image"])
    assert np.array_equal(x[0, 0].numpy(), raw)
    xd, yd, rd = to_device((x, y, r), CPU)
    assert xd.dtype == torch.float32 and float(xd.min()) >= 0.0 and float(xd.max()) <= 1.0
    assert torch.equal((xd * 255).round().to(torch.uint8), x)
    assert torch.equal(yd, y) and torch.equal(rd, r)
    assert [train.ids[i] for b in batches for i in b[2]] == [train.ids[i] for i in rows]


def test_shuffling_is_driven_by_the_seed_alone(fmnist: DataSpec) -> None:
    train = load_split(fmnist, "train")
    info = input_info(train, fmnist)
    src = source(train, np.arange(0, 600, 3), spec=fmnist, info=info)

    def order(seed: int) -> list[int]:
        loader = make_loader(src, batch_size=64, shuffle=True, seed=seed, device=CPU)
        return [int(i) for _, _, rows in loader for i in rows]

    first = order(1)
    assert first == order(1) != order(2)
    assert sorted(first) == list(range(0, 600, 3))  # every row exactly once per epoch


def sha_share(identifier: str) -> float:
    """The obvious reference: first 8 bytes of SHA-256 as a fraction of 2^64."""
    return int.from_bytes(hashlib.sha256(identifier.encode()).digest()[:8], "big") / 2.0**64


def test_reference_mask_is_a_stable_hash_split(fmnist: DataSpec) -> None:
    """A held-out row is readable by methods iff hash(ID) < fraction: independent of row order and
    seeds, nested as the fraction grows, and close to the asked share (4,000 rows, p = 0.25:
    binomial s.d. 0.7 points, so ±2 points is over 2.9 s.d.)."""
    ids = load_split(fmnist, "heldout").ids
    mask = reference_mask(ids, fraction=0.25)
    assert mask.dtype == bool and abs(mask.mean() - 0.25) < 0.02
    assert [m for m in mask[:50]] == [sha_share(i) < 0.25 for i in ids[:50]]
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = reference_mask(tuple(ids[i] for i in order), fraction=0.25)
    assert np.array_equal(shuffled, mask[order])
    smaller = reference_mask(ids, fraction=0.1)
    assert not (smaller & ~mask).any() and smaller.sum() < mask.sum()


def rewrite_parquet(src: Path, dst: Path, *, change: dict[str, object]) -> None:
    """Copy a parquet split, replacing the given columns (the HF feature metadata is kept)."""
    table = pq.read_table(src)
    for name, values in change.items():
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        table = table.set_column(index, field, pa.array(values, type=field.type))
    pq.write_table(table, dst)


def test_fingerprint_tracks_ids_and_labels(fmnist: DataSpec, tmp_path: Path) -> None:
    train = load_split(fmnist, "train")
    shutil.copytree(fmnist.path, tmp_path / "copy")
    copy = load_split(DataSpec(path=str(tmp_path / "copy")), "train")
    assert fingerprint(copy, fmnist) == fingerprint(train, fmnist)
    labels = train.labels.copy()
    labels[123] = (labels[123] + 1) % 10
    (tmp_path / "relabelled").mkdir()
    rewrite_parquet(
        Path(fmnist.path) / "train.parquet",
        tmp_path / "relabelled" / "train.parquet",
        change={"label": labels.tolist()},
    )
    relabelled = load_split(DataSpec(path=str(tmp_path / "relabelled")), "train")
    assert relabelled.labels[123] != train.labels[123]
    assert fingerprint(relabelled, fmnist) != fingerprint(train, fmnist)


def test_fingerprint_ignores_row_order(fmnist: DataSpec, tmp_path: Path) -> None:
    """Issue 12 item 5: a shuffled copy of the same rows is the same data."""
    table = pq.read_table(Path(fmnist.path) / "train.parquet")
    order = np.random.default_rng(0).permutation(table.num_rows)
    (tmp_path / "shuffled").mkdir()
    pq.write_table(table.take(order), tmp_path / "shuffled" / "train.parquet")
    shuffled = load_split(DataSpec(path=str(tmp_path / "shuffled")), "train")
    train = load_split(fmnist, "train")
    assert shuffled.ids != train.ids
    # the sample is stored in ID order (hashed from contiguous slices), the shuffled copy is
    # not (gathered with ``take``): the two ways of reading must give the same bytes
    assert list(train.ids) == sorted(train.ids)
    assert fingerprint(shuffled, fmnist) == fingerprint(train, fmnist)
    assert fingerprint(train, fmnist).startswith("v2:")


def test_fingerprint_reads_every_column_type_alike_in_any_row_order(tmp_path: Path) -> None:
    """Rows stored in ID order are hashed from slices, any other order through ``take``: the
    digests must agree for every kind of column (strings, integer labels, floats with and without
    nulls, token lists, nested lists), across chunk boundaries (the arrow cache writes chunks
    of 1,000 rows, the fingerprint reads 8,192 at a time), and still tell a changed value."""
    rng = np.random.default_rng(0)
    n = 9_500
    floats = rng.normal(size=n)
    holey = [None if i % 97 == 0 else float(v) for i, v in enumerate(rng.normal(size=n))]
    table = pa.table(
        {
            "id": [f"r{i:05d}" for i in range(n)],
            "label": rng.integers(0, 3, n),
            "x": floats,
            "holey": pa.array(holey, type=pa.float64()),
            "text": [f"row {i} " + "w" * int(k) for i, k in enumerate(rng.integers(0, 9, n))],
            "tokens": [rng.integers(0, 50, int(k)).tolist() for k in rng.integers(1, 6, n)],
            "grid": [rng.integers(0, 256, (2, 3)).tolist() for _ in range(n)],
        }
    )
    spec = DataSpec(input_columns=("x", "holey", "text", "tokens", "grid"))

    def split_in(name: str) -> Split:
        return load_split(dataclasses.replace(spec, path=str(tmp_path / name)), "train")

    digests = {}
    for name, order in {
        "in_order": np.arange(n),
        "shuffled": rng.permutation(n),
        "reversed": np.arange(n)[::-1],
    }.items():
        (tmp_path / name).mkdir()
        pq.write_table(table.take(order), tmp_path / name / "train.parquet", row_group_size=700)
        split = split_in(name)
        assert (list(split.ids) == sorted(split.ids)) == (name == "in_order")  # which path
        digests[name] = fingerprint(split, spec)
    assert digests["in_order"] == digests["shuffled"] == digests["reversed"]
    floats[n - 1] += 1e-9  # in the last, partial chunk of the in-order path
    (tmp_path / "changed").mkdir()
    rewrite_parquet(
        tmp_path / "in_order" / "train.parquet",
        tmp_path / "changed" / "train.parquet",
        change={"x": floats.tolist()},
    )
    assert fingerprint(split_in("changed"), spec) != digests["in_order"]


def test_fingerprint_covers_the_inputs(fmnist: DataSpec, tmp_path: Path) -> None:
    """Issue 12 item 5: one changed pixel of one image changes the fingerprint."""
    table = pq.read_table(Path(fmnist.path) / "train.parquet")
    images = table.column("image").to_pylist()
    images[4321][10][10] = (images[4321][10][10] + 1) % 256
    field = table.schema.field("image")
    index = table.schema.get_field_index("image")
    (tmp_path / "edited").mkdir()
    pq.write_table(
        table.set_column(index, field, pa.array(images, type=field.type)),
        tmp_path / "edited" / "train.parquet",
    )
    edited = load_split(DataSpec(path=str(tmp_path / "edited")), "train")
    train = load_split(fmnist, "train")
    assert edited.ids == train.ids and (edited.labels == train.labels).all()
    assert fingerprint(edited, fmnist) != fingerprint(train, fmnist)


def test_legacy_fingerprints_stay_readable(fmnist: DataSpec, tmp_path: Path) -> None:
    """A checkpoint from before ``v2`` recorded the row-order hash of IDs and labels."""
    train = load_split(fmnist, "train")
    assert fingerprint_matches(legacy_fingerprint(train), train, fmnist)[0]
    assert not fingerprint_matches("0" * 64, train, fmnist)[0]


def test_changed_training_data_stops_open_workspace_unless_accepted(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dir / "fashion-mnist", data)
    labels = load_split(DataSpec(path=str(data)), "train").labels.copy()
    labels[0] = (labels[0] + 1) % 10
    rewrite_parquet(
        sample_dir / "fashion-mnist" / "train.parquet",
        data / "train.parquet",
        change={"label": labels.tolist()},
    )
    flags = {"data.path": str(data)}
    with pytest.raises(DataError, match=r"not the data this model.*accept_data_change=True") as e:
        open_workspace(tiny_ckpt, flags=flags)
    assert "pass --accept-data-change if" in e.value.message_for(FLAGS)
    ws = open_workspace(tiny_ckpt, flags=flags, accept_data_change=True)
    assert ws.data_changed
    assert not open_workspace(tiny_ckpt).data_changed


def test_duplicate_ids_are_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b", "a", "c", "b"], "x": [1.0] * 5, "label": [0, 1, 0, 1, 0]}),
        tmp_path / "d" / "train.parquet",
    )
    spec = DataSpec(path=str(tmp_path / "d"), input_columns=("x",))
    with pytest.raises(DataError, match="'id' has duplicates \\(first: a, b\\)"):
        load_split(spec, "train")


def test_ids_in_both_splits_are_a_data_error(
    tiny_ckpt: Path, sample_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dir / "fashion-mnist", data)
    train_ids = pq.read_table(sample_dir / "fashion-mnist" / "train.parquet").column("id")
    ids = pq.read_table(sample_dir / "fashion-mnist" / "heldout.parquet").column("id").to_pylist()
    ids[:2] = train_ids.to_pylist()[:2]
    rewrite_parquet(
        sample_dir / "fashion-mnist" / "heldout.parquet",
        data / "heldout.parquet",
        change={"id": ids},
    )
    with pytest.raises(DataError, match="2 IDs are in both the training and held-out split"):
        open_workspace(tiny_ckpt, flags={"data.path": str(data)})


def test_missing_folder_split_and_columns(fmnist: DataSpec, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_split(DataSpec(path=str(tmp_path / "absent")), "train")
    with pytest.raises(DataError, match="no parquet files for split 'validation'"):
        load_split(fmnist, "validation")
    spec = DataSpec(path=fmnist.path, id_column="uid", input_columns=("pixels",))
    with pytest.raises(DataError) as info:
        load_split(spec, "train")
    message = str(info.value)
    assert "2 problems" in message and "'uid'" in message and "'pixels'" in message
    assert "columns: id, image, label" in message


def test_arrow_needs_a_dataset_dict_with_the_split(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"id": ["a"], "x": [1.0], "label": [0]}).save_to_disk(
        str(tmp_path / "single")
    )
    with pytest.raises(DataError, match="single Dataset"):
        load_split(DataSpec(path=str(tmp_path / "single"), format="arrow"), "train")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"id": ["a"], "x": [1.0], "label": [0]})}
    ).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="has no split 'heldout' \\(has: train\\)"):
        load_split(DataSpec(path=str(tmp_path / "dict")), "heldout")
