"""The run spec (DESIGN §1, §3): precedence flags > config TOML > checkpoint metadata, relative data
paths that survive a moved folder, every problem in one error, plugin code only when named."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from unforget import cli
from unforget.config.spec import (
    DataSpec,
    Recipe,
    RunSpec,
    flags_layer,
    merge_spec,
    spec_layer_from_json,
    spec_layer_from_toml,
)
from unforget.errors import EXIT_BAD_INPUT, SpecError
from unforget.io.checkpoint import KEY_SPEC, load_checkpoint, save_checkpoint
from unforget.models import build_model
from unforget.runtime.device import precision_for, resolve_device
from unforget.workflows.train import train_checkpoint
from unforget.workflows.workspace import open_workspace, resolve_spec, spec_from_checkpoint

CPU = precision_for(resolve_device("cpu"))


def ckpt_with_spec(path: Path, layer: dict) -> Path:
    spec = merge_spec(layer)
    save_checkpoint(path, {"w": torch.zeros(1)}, metadata={KEY_SPEC: spec.to_json()})
    return path


def test_defaults_need_only_a_data_path() -> None:
    spec = merge_spec({"data": {"path": "/data"}})
    assert spec.model.name == "mlp" and spec.data.path == "/data"
    assert spec.recipe == Recipe() and spec.data.input_columns == ("image",)


def test_precedence_flags_over_config_over_metadata(tmp_path: Path) -> None:
    """Each layer overrides only the keys it sets: epochs comes from the checkpoint, batch size
    from the config file, lr from the flag that beats both."""
    ckpt = ckpt_with_spec(
        tmp_path / "m.safetensors",
        {
            "data": {"path": "/meta/data", "label_column": "y"},
            "recipe": {"lr": 0.1, "epochs": 7, "batch_size": 32},
        },
    )
    config = tmp_path / "run.toml"
    config.write_text('[data]\npath = "/cfg/data"\n[recipe]\nlr = 0.01\nbatch_size = 16\n')
    spec, _ = resolve_spec(
        load_checkpoint(ckpt), config=config, flags={"recipe.lr": "0.001", "data.path": "/flag"}
    )
    assert spec.recipe.lr == 0.001 and spec.recipe.batch_size == 16 and spec.recipe.epochs == 7
    assert spec.data.path == "/flag" and spec.data.label_column == "y"
    spec, _ = resolve_spec(load_checkpoint(ckpt), config=config, flags={})
    assert spec.recipe.lr == 0.01 and spec.data.path == "/cfg/data"
    spec, _ = resolve_spec(load_checkpoint(ckpt), config=None, flags={})
    assert spec.recipe.lr == 0.1 and spec.data.path == "/meta/data"


def test_merge_spec_layers_lowest_first() -> None:
    spec = merge_spec(
        {"data": {"path": "a"}, "recipe": {"epochs": 3, "seed": 1}},
        None,
        {"recipe": {"epochs": 5}},
        flags_layer({"recipe.seed": "9", "model.name": "cnn"}),
    )
    assert (spec.recipe.epochs, spec.recipe.seed, spec.model.name) == (5, 9, "cnn")


def test_flags_layer_nests_dotted_keys() -> None:
    assert flags_layer({"recipe.lr": "0.1", "recipe.epochs": "2", "data.path": "d"}) == {
        "recipe": {"lr": "0.1", "epochs": "2"},
        "data": {"path": "d"},
    }


def test_string_flags_are_coerced_to_the_field_types() -> None:
    spec = merge_spec(
        flags_layer(
            {
                "data.path": "d",
                "recipe.epochs": "4",
                "recipe.lr": "3e-4",
                "recipe.augmentation": "hflip,crop",
                "data.input_columns": '["a", "b"]',
                "model.kwargs": '{"hidden": [8]}',
            }
        )
    )
    assert spec.recipe.epochs == 4 and spec.recipe.lr == pytest.approx(3e-4)
    assert spec.recipe.augmentation == ("hflip", "crop")
    assert spec.data.input_columns == ("a", "b")
    assert spec.model.kwargs == {"hidden": [8]}


def test_spec_json_round_trip() -> None:
    """What ``train`` writes into metadata reads back as the same spec (tuples included)."""
    spec = RunSpec(
        data=DataSpec(path="x", input_columns=("a", "b")),
        recipe=Recipe(augmentation=("hflip",), epochs=2),
        num_classes=10,
        input_shape=(1, 28, 28),
        train_fingerprint="abc",
        class_names=("t", "u"),
    )
    assert merge_spec(spec_layer_from_json(spec.to_json())) == spec


def test_every_problem_is_reported_in_one_spec_error() -> None:
    """Unknown keys, unknown sections and bad values in several sections: one error, all named."""
    with pytest.raises(SpecError) as info:
        merge_spec(
            {
                "model": {"name": "mlp", "widht": 3},
                "data": {"path": "d", "format": "xls"},
                "recipe": {"lr": "fast", "epochs": "many", "bogus": 1},
                "trainer": {"x": 1},
            }
        )
    message = str(info.value)
    assert message.startswith("run spec: 4 problems:")
    for needle in (
        "unknown option 'widht'",
        "format='xls': expected one of auto, parquet",
        "lr='fast': expected a number",
        "epochs='many': expected an integer",
        "unknown option 'bogus'",
        "unknown section 'trainer'",
    ):
        assert needle in message, needle
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_range_checks_are_collected_too() -> None:
    with pytest.raises(SpecError) as info:
        merge_spec(
            {
                "data": {"path": "d", "reference_fraction": 1.5},
                "recipe": {"lr": -1, "epochs": 0, "augmentation": ["rotate"]},
            }
        )
    message = str(info.value)
    for needle in (
        "reference_fraction must be in (0, 1)",
        "recipe.lr must be > 0",
        "recipe.epochs must be >= 1",
        "unknown ['rotate']",
    ):
        assert needle in message, needle


def test_missing_data_path_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"data\.path is not set"):
        merge_spec({"recipe": {"epochs": 1}})
    with pytest.raises(SpecError, match=r"data\.path is not set"):
        merge_spec({"data": {"label_column": "y"}})


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        spec_layer_from_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\npath = 1\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        spec_layer_from_toml(bad)


def test_relative_data_path_in_toml_resolves_against_the_toml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proj").mkdir()
    config = tmp_path / "proj" / "unforget.toml"
    config.write_text('[data]\npath = "../shared/fmnist"\n')
    monkeypatch.chdir(tmp_path / "proj")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec, _ = resolve_spec(None, config=config, flags={})
    assert Path(spec.data.path) == (tmp_path / "shared" / "fmnist").resolve()


def test_relative_data_flag_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec, _ = resolve_spec(None, config=None, flags={"data.path": "data"})
    assert Path(spec.data.path) == (tmp_path / "data").resolve()


def test_relative_data_path_in_metadata_resolves_against_the_checkpoint_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = ckpt_with_spec(tmp_path / "m.safetensors", {"data": {"path": "fashion-mnist"}})
    monkeypatch.chdir("/")
    layer = spec_from_checkpoint(load_checkpoint(ckpt))
    assert Path(layer["data"]["path"]) == (tmp_path / "fashion-mnist").resolve()


def test_a_moved_folder_with_data_and_checkpoint_keeps_working(
    tmp_path: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train`` stores the data path relative to the checkpoint; move both and it still opens."""
    first = tmp_path / "first"
    shutil.copytree(sample_dir / "fashion-mnist", first / "fashion-mnist")
    spec = merge_spec(
        {
            "model": {"kwargs": {"hidden": [8]}},
            "data": {"path": str(first / "fashion-mnist")},
            "recipe": {"epochs": 1, "batch_size": 256},
        }
    )
    train_checkpoint(spec, out=first / "model.safetensors", precision=CPU)
    stored = load_checkpoint(first / "model.safetensors").meta_json(KEY_SPEC)["data"]["path"]
    assert stored == "fashion-mnist"
    moved = tmp_path / "archive" / "moved"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    monkeypatch.chdir(tmp_path)
    ws = open_workspace(moved / "model.safetensors")
    assert Path(ws.spec.data.path) == (moved / "fashion-mnist").resolve()
    assert len(ws.train) == 6000 and not ws.data_changed


PLUGIN = '''
"""A user's model factory; importing it leaves a trace so tests can see whether it ran."""
from pathlib import Path
from torch import nn

Path(__file__).with_suffix(".imported").write_text("imported")


def build(*, input_shape, num_classes, width=8):
    size = 1
    for d in input_shape:
        size *= d
    layers = [nn.Flatten(), nn.Linear(size, width), nn.ReLU(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)
'''


@pytest.fixture
def plugin_ckpt(
    tmp_path: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str, Path]:
    """A checkpoint trained with plugin model code, then the plugin's import trace removed."""
    name = "unforget_test_plugin_mod"
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.delitem(sys.modules, name, raising=False)
    spec = merge_spec(
        {
            "model": {"name": f"{name}:build"},
            "data": {"path": str(sample_dir / "fashion-mnist")},
            "recipe": {"epochs": 1, "batch_size": 256},
        }
    )
    out = tmp_path / "plugin.safetensors"
    train_checkpoint(spec, out=out, precision=CPU, allow_plugin=True)
    trace = tmp_path / "plugins" / f"{name}.imported"
    trace.unlink()
    sys.modules.pop(name, None)
    return out, f"{name}:build", trace


def test_plugin_named_only_in_metadata_is_refused(plugin_ckpt: tuple[Path, str, Path]) -> None:
    ckpt, name, trace = plugin_ckpt
    ws = open_workspace(ckpt)
    assert ws.spec.model.name == name and not ws.allow_plugin
    with pytest.raises(SpecError, match=f"only runs when you name it.*model={name}"):
        build_model(
            ws.spec.model,
            input_shape=ws.info.shape,
            num_classes=ws.info.num_classes,
            allow_plugin=ws.allow_plugin,
        )
    assert not trace.exists(), "plugin code ran although only the checkpoint named it"


def test_plugin_refusal_through_apply_is_one_line_exit_2(
    plugin_ckpt: tuple[Path, str, Path],
    sample_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, _, trace = plugin_ckpt
    out = tmp_path / "out.safetensors"
    manifest = sample_dir / "forget_random10.txt"
    code = cli.run(["apply", "--ckpt", str(ckpt), "--forget", str(manifest), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.startswith("unforget: error:") and err.count("\n") == 1 and "plugin" in err
    assert not out.exists() and not trace.exists()


def test_plugin_named_by_the_user_runs(plugin_ckpt: tuple[Path, str, Path], tmp_path: Path) -> None:
    ckpt, name, trace = plugin_ckpt
    spec, allowed = resolve_spec(load_checkpoint(ckpt), config=None, flags={"model.name": name})
    assert allowed
    model = build_model(spec.model, input_shape=(1, 28, 28), num_classes=10, allow_plugin=allowed)
    assert trace.exists()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    config = tmp_path / "plugin.toml"
    config.write_text(f'[model]\nname = "{name}"\n')
    _, allowed_by_config = resolve_spec(load_checkpoint(ckpt), config=config, flags={})
    assert allowed_by_config
