#!/usr/bin/env python3
"""Rebuild ``sample_data/`` reproducibly from the Debian package ``dataset-fashion-mnist``.

    sudo apt-get install -y dataset-fashion-mnist
    python scripts/build_sample_data.py            # data, checkpoint, manifests

Writes a stratified Fashion-MNIST subset (parquet, string ``id`` column), trains the sample
checkpoint with ``unforget train`` (an MLP that memorises its training set, so membership
leaks), and writes two forget manifests: a random 10% and the whole class "Sandal".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unforget.data import fmnist  # noqa: E402

TRAIN_PER_CLASS = 600  # 6,000 training rows
TEST_PER_CLASS = 400  # 4,000 held-out rows: 1,000 for methods to read, 3,000 audit evidence
SEED = 20241123


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "sample_data")
    parser.add_argument("--skip-train", action="store_true", help="data and manifests only")
    args = parser.parse_args()
    data = args.out / "fashion-mnist"
    _, train_labels = fmnist.load("train")
    _, test_labels = fmnist.load("test")
    train_rows = fmnist.stratified_subset(train_labels, TRAIN_PER_CLASS, seed=SEED)
    test_rows = fmnist.stratified_subset(test_labels, TEST_PER_CLASS, seed=SEED + 1)
    print(fmnist.export(data, train_rows=train_rows, test_rows=test_rows))
    ids = np.array([f"fmnist-train-{r:05d}" for r in train_rows])
    labels = train_labels[train_rows]
    rng = np.random.default_rng(SEED + 2)
    random_ids = sorted(rng.choice(ids, size=len(ids) // 10, replace=False))
    sandal = fmnist.CLASS_NAMES.index("Sandal")
    _write_manifest(
        args.out / "forget_random10.txt", random_ids, "random 10% of the sample training split"
    )
    _write_manifest(
        args.out / "forget_class_sandal.txt",
        sorted(ids[labels == sandal]),
        "every training sample of class 'Sandal' (class removal)",
    )
    if not args.skip_train:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "unforget",
                "train",
                "--config",
                str(args.out / "unforget.toml"),
                "--out",
                str(args.out / "model.safetensors"),
                "--device",
                "cpu",
                "--force",
            ],
            check=True,
        )


def _write_manifest(path: Path, ids: list[str], what: str) -> None:
    header = f"# unforget forget manifest: {what} ({len(ids)} IDs)\n"
    path.write_text(header + "\n".join(ids) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
