"""One deletion's rows, resolved once (``Workspace.deletion``) for apply, audit and bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unforget.io.manifest import read_manifest
from unforget.workflows.workspace import open_request, open_workspace


def test_class_removal_resolves_disjoint_rows_and_the_removed_class(
    sample_ckpt: Path, sample_dir: Path
) -> None:
    ws, manifest, forget = open_request(sample_ckpt, sample_dir / "forget_class_sandal.txt")
    assert manifest.sha256 == read_manifest(sample_dir / "forget_class_sandal.txt").sha256
    d = ws.deletion(forget)
    names = ws.spec.class_names or ws.info.class_names
    assert [names[c] for c in d.removed_classes] == ["Sandal"]
    assert not np.intersect1d(d.forget, d.retain).size
    assert len(d.forget) + len(d.retain) == len(ws.train)
    assert not np.intersect1d(d.reference, d.evidence).size
    assert len(d.reference) + len(d.evidence) == len(ws.heldout)
    assert set(ws.train.labels[d.forget].tolist()) == {d.removed_classes[0]}


def test_random_forgetting_removes_no_class_and_samples_reproducibly(
    sample_ckpt: Path, sample_dir: Path
) -> None:
    ws = open_workspace(sample_ckpt)
    d = ws.deletion(ws.forget_rows(read_manifest(sample_dir / "forget_random10.txt")))
    assert d.removed_classes == ()
    a = d.retain_sample(np.random.default_rng(3))
    b = d.retain_sample(np.random.default_rng(3))
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and np.isin(a, d.retain).all()
    assert len(a) == 2048 and not np.array_equal(a, d.retain_sample(np.random.default_rng(4)))
    assert np.array_equal(ws.retain_rows(d.forget), d.retain)


def test_a_class_stays_when_some_of_its_rows_remain(sample_ckpt: Path) -> None:
    ws = open_workspace(sample_ckpt)
    sandal = np.flatnonzero(ws.train.labels == 5)
    assert ws.deletion(sandal[:-1]).removed_classes == ()
    assert ws.deletion(sandal).removed_classes == (5,)
