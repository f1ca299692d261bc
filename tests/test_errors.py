"""Library messages name parameters (``unforget.errors.param``); the CLI spells them as flags."""

from __future__ import annotations

import re
from pathlib import Path

from unforget.cli.app import FLAGS
from unforget.errors import InputError, OutputExistsError, param, render

PACKAGE = Path(__file__).resolve().parents[1] / "unforget"


def test_python_callers_read_keywords_and_the_cli_reads_flags() -> None:
    err = OutputExistsError(f"m.safetensors already exists; pass {param('force', True)}")
    assert str(err) == "m.safetensors already exists; pass force=True"
    assert err.message_for(FLAGS) == "m.safetensors already exists; pass --force"
    refs = InputError(f"add references: {param('refs', 8)} or {param('manifest')}")
    assert str(refs) == "add references: refs=8 or manifest"
    assert refs.message_for(FLAGS) == "add references: --refs 8 or --forget"
    option = render(f"try {param('options', 'lr=0.00025')}")
    assert option == 'try options={"lr": "0.00025"}'
    assert render(f"try {param('options', 'lr=0.00025')}", FLAGS) == "try --set lr=0.00025"


def test_every_parameter_a_message_names_has_a_flag() -> None:
    """A name without a flag would reach the shell user as a Python keyword."""
    named = set()
    for path in PACKAGE.rglob("*.py"):
        named |= set(re.findall(r"""param\(\s*["']([a-z_]+)["']""", path.read_text()))
    assert {"force", "ckpt", "manifest", "out", "accept_data_change"} <= named
    assert named <= set(FLAGS), f"no flag for {sorted(named - set(FLAGS))}"
    assert not any(value.startswith("--") is False for value in FLAGS.values())


def test_no_library_message_spells_a_flag() -> None:
    """Raised messages outside ``cli/`` name parameters, never ``--flags`` (issue 14)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"""(Error\(|problems\.append\()\s*f?["'][^"']*--[a-z]""", code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}")
    assert not offenders, offenders
