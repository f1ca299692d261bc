"""Checkpoint I/O (DESIGN §4): safetensors only, symmetric, atomic, tied weights, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from unforget.cli.app import FLAGS
from unforget.errors import EXIT_BAD_INPUT, CheckpointError, OutputExistsError
from unforget.io import checkpoint as ckpt_io
from unforget.io import fileio
from unforget.io.checkpoint import load_checkpoint, load_into, save_checkpoint, state_dict_cpu


class TiedLM(nn.Module):
    """A toy language model whose output head shares the embedding matrix (weight tying)."""

    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.embed(tokens))))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_tensors_and_metadata(tmp_path: Path) -> None:
    """Tensors come back bit-identical with their dtypes; non-string metadata is JSON-encoded."""
    torch.manual_seed(0)
    state = {
        "w": torch.randn(3, 5),
        "b": torch.randn(5, dtype=torch.float64),
        "steps": torch.tensor([7], dtype=torch.int64),
        "half": torch.randn(2, 2).to(torch.bfloat16),
        "flags": torch.tensor([True, False]),
    }
    meta = {"unforget.spec": '{"x": 1}', "unforget.provenance": {"seed": 3, "ids": [1, 2]}}
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(path, state, metadata=meta)
    loaded = load_checkpoint(path)
    assert sha == loaded.sha256 == fileio.sha256_file(path)
    assert set(loaded.tensors) == set(state)
    for name, tensor in state.items():
        assert loaded.tensors[name].dtype == tensor.dtype
        assert torch.equal(loaded.tensors[name], tensor)
    assert loaded.metadata["unforget.spec"] == '{"x": 1}'
    assert loaded.meta_json("unforget.provenance") == {"seed": 3, "ids": [1, 2]}
    assert loaded.meta_json("unforget.ledger", default=[]) == []
    assert loaded.metadata["format"] == "pt"
    assert loaded.num_parameters == 15 + 5 + 1 + 4 + 2


def test_saved_file_is_plain_safetensors(tmp_path: Path) -> None:
    """Other tools (``safe_open``) read our files: no custom container."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"a": torch.arange(6.0).reshape(2, 3)}, metadata={"k": "v"})
    with safe_open(str(path), framework="pt") as handle:
        assert list(handle.keys()) == ["a"]
        assert handle.metadata()["k"] == "v"
        assert torch.equal(handle.get_tensor("a"), torch.arange(6.0).reshape(2, 3))


def test_tied_weights_saved_once_and_loaded_back_into_the_module(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TiedLM()
    state = model.state_dict()
    assert state["embed.weight"].data_ptr() == state["head.weight"].data_ptr()
    path = tmp_path / "lm.safetensors"
    save_checkpoint(path, state_dict_cpu(model), metadata={})
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
        aliases = json.loads(handle.metadata()[ckpt_io.KEY_ALIASES])
    assert len(stored) == len(state) - 1
    ((dropped, kept),) = aliases.items()
    assert {dropped, kept} == {"embed.weight", "head.weight"} and kept in stored
    loaded = load_checkpoint(path)
    assert set(loaded.tensors) == set(state)
    assert torch.equal(loaded.tensors["head.weight"], model.embed.weight.detach())
    fresh = TiedLM()
    load_into(fresh, loaded)
    tokens = torch.tensor([[1, 2, 3, 10]])
    assert torch.equal(fresh(tokens), model(tokens))
    assert fresh.head.weight is fresh.embed.weight  # still tied after loading


def test_partial_views_of_one_storage_are_saved_as_separate_tensors(tmp_path: Path) -> None:
    """Two different slices of one buffer are not aliases (different offsets): both are kept,
    with their own values (safetensors itself refuses shared storage, so they are copied)."""
    base = torch.arange(10.0)
    path = tmp_path / "views.safetensors"
    save_checkpoint(path, {"lo": base[:4], "hi": base[4:]}, metadata={})
    loaded = load_checkpoint(path)
    assert ckpt_io.KEY_ALIASES not in loaded.metadata
    assert loaded.tensors["lo"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert loaded.tensors["hi"].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def test_refuses_existing_output_unless_force(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"a": torch.zeros(2)}, metadata={})
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="pass force=True to replace") as info:
        save_checkpoint(path, {"a": torch.ones(2)}, metadata={})
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert "pass --force to replace" in info.value.message_for(FLAGS)  # what the CLI prints
    assert path.read_bytes() == before
    save_checkpoint(path, {"a": torch.ones(2)}, metadata={}, force=True)
    assert torch.equal(load_checkpoint(path).tensors["a"], torch.ones(2))


def test_failed_rename_leaves_no_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m.safetensors", {"a": torch.zeros(3)}, metadata={})
    assert listing(tmp_path) == []


def test_failed_write_keeps_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --force the old file is replaced only by a complete new one: a crash mid-write
    (here: fsync fails) leaves the old bytes and no temporary file."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"a": torch.zeros(3)}, metadata={})
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(fileio.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        save_checkpoint(path, {"a": torch.ones(3)}, metadata={}, force=True)
    assert listing(tmp_path) == ["m.safetensors"]
    assert path.read_bytes() == before


def test_unserialisable_state_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any failure, as long as nothing is written
        save_checkpoint(tmp_path / "m.safetensors", {"a": "not a tensor"}, metadata={})  # type: ignore[dict-item]
    assert listing(tmp_path) == []


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_checkpoints_are_refused_with_a_hint_and_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(2)}, path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called on user input")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "pickle" in message and "safetensors" in message
    assert "weights_only=True" in message and f"model{suffix}" in message
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"a": torch.randn(64, 64)}, metadata={"k": "v"})
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_corrupt_metadata_values_are_checkpoint_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"a": torch.zeros(1)}, metadata={"unforget.spec": "{not json"})
    with pytest.raises(CheckpointError, match=r"'unforget\.spec' is not valid JSON"):
        load_checkpoint(path).meta_json("unforget.spec")
    bad_alias = tmp_path / "alias.safetensors"
    save_checkpoint(bad_alias, {"a": torch.zeros(1)}, metadata={ckpt_io.KEY_ALIASES: '{"b": "c"}'})
    with pytest.raises(CheckpointError, match="tied weight 'b' points at missing 'c'"):
        load_checkpoint(bad_alias)


def test_load_into_names_missing_unexpected_and_mismatched_tensors(tmp_path: Path) -> None:
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    state = state_dict_cpu(src)
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"]
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, state, metadata={})
    target = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_into(target, load_checkpoint(path))
    message = str(info.value)
    assert "does not fit the spec's architecture" in message
    assert "missing 1 tensors (first: 2.bias)" in message
    assert "unexpected 1 tensors (first: extra.weight)" in message
    assert "0.weight (8, 4) vs (16, 4)" in message and "3 shape mismatches" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_load_into_a_matching_model_restores_its_function(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    src[1].running_mean.normal_()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, state_dict_cpu(src), metadata={})
    dst = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    load_into(dst, load_checkpoint(path))
    x = torch.randn(5, 4)
    assert torch.equal(dst(x), src(x))


def test_outputs_get_ordinary_file_modes(tmp_path: Path) -> None:
    """The temporary file is created 0600; the finished checkpoint follows the umask like any
    other file (umask 022 -> 0644), so a pipeline's next user can read it."""
    import os

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "m.safetensors", {"a": torch.zeros(1)}, metadata={})
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
