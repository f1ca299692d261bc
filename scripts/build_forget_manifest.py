#!/usr/bin/env python3
"""Write a seeded random forget manifest from the sample's training IDs.

    python scripts/build_forget_manifest.py --fraction 0.2 --out sample_data/forget_random20.txt

The shipped ``sample_data/forget_random20.txt`` (1,200 of 6,000 IDs) comes from the defaults
below. It is larger than ``forget_random10.txt`` because a PASS needs enough forget samples for
the audit's interval of AUC_U − AUC_ref to fit inside ±δ (see the README's minimum sizes); the IDs
are read from the data itself, so the script needs nothing but ``sample_data/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SEED = 20241203


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "sample_data/fashion-mnist")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of training IDs")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=ROOT / "sample_data/forget_random20.txt")
    args = parser.parse_args()
    if not 0.0 < args.fraction < 1.0:
        parser.error(f"--fraction must lie in (0, 1), got {args.fraction}")
    ids = np.array(pq.read_table(args.data / "train.parquet", columns=["id"])["id"].to_pylist())
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(ids, size=round(len(ids) * args.fraction), replace=False))
    what = f"random {args.fraction:.0%} of the sample training split, seed {args.seed}"
    header = f"# unforget forget manifest: {what} ({len(chosen)} IDs)\n"
    args.out.write_text(header + "\n".join(chosen) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({len(chosen)} IDs)")


if __name__ == "__main__":
    main()
