"""Path guards: every input and output path is checked before any work, and no output may name
an input.

A command that trains for minutes and then finds its ``--out`` is a directory, or that replaces
the checkpoint it was asked to audit with a CSV, has failed its user twice. So each command lists
its inputs (files read) and outputs (files written, including derived names such as receipts
and sidecars) up front and calls :func:`check_plan` once. Paths are compared by resolved path
*and* by inode, so a symlink or hard link to an input is caught too. Inside the data folder
no existing file may be replaced and no file the loaders read may be created: a new
``train-x.csv`` there would silently join the training split.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from unforget.errors import InputError, param


@dataclass(frozen=True)
class IOPlan:
    """What one command reads and writes.

    ``inputs`` and ``outputs`` map a human name to a path: a caller's parameter
    (``param("ckpt")``, which the CLI spells ``--ckpt``) or a phrase such as ``"the receipt of
    " + param("out")``; ``folders`` are input folders (data) under which nothing may be written.
    """

    inputs: Mapping[str, Path] = field(default_factory=dict)
    outputs: Mapping[str, Path] = field(default_factory=dict)
    folders: Mapping[str, Path] = field(default_factory=dict)
    directories: frozenset[str] = frozenset()  # names that may be folders (model directories)


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same file: same resolved path, or same device+inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_under(path: Path, folder: Path) -> bool:
    """True when ``path`` (resolved) lies inside ``folder`` (resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def input_clashes(plan: IOPlan) -> dict[str, str]:
    """Output name -> problem, for each output that names an input or another output."""
    problems: dict[str, str] = {}
    for out_name, out in plan.outputs.items():
        for in_name, src in plan.inputs.items():
            if same_file(out, src):
                problems[out_name] = (
                    f"{out_name} ({out}) is the same file as {in_name}; unforget never "
                    "overwrites its input, choose another path"
                )
        for in_name, folder in plan.folders.items():
            if is_under(out, folder) and (out.exists() or _reads_as_data(out)):
                problems[out_name] = (
                    f"{out_name} ({out}) lies inside {in_name} ({folder}) and would replace or "
                    "join the data; write it elsewhere"
                )
    names = list(plan.outputs.items())
    for i, (a_name, a) in enumerate(names):
        for b_name, b in names[i + 1 :]:
            if same_file(a, b):
                problems.setdefault(b_name, f"{a_name} and {b_name} are the same file ({a})")
    return problems


# Files the data loaders would pick up (see ``unforget.data.splits``): a new one inside the data
# folder could join a split or change the detected format.
DATA_SUFFIXES = frozenset(
    {".parquet", ".csv", ".jsonl", ".json", ".arrow", ".png", ".jpg", ".jpeg", ".bmp", ".gif"}
    | {".webp", ".tif", ".tiff"}
)


def _reads_as_data(path: Path) -> bool:
    """Would a new file at ``path`` be read as data? Receipts (``*.receipt.json``) beside a
    checkpoint that shares its folder with the data (``sample_data/text``) are not."""
    return path.suffix.lower() in DATA_SUFFIXES and not path.name.endswith(".receipt.json")


def output_problem(path: Path, *, what: str, directory: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file (or a folder with ``directory``), or None: a
    directory where a file is meant, or an unwritable folder."""
    if path.is_dir() and not directory:
        return f"{what} {path} is a directory; name a file"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing ancestor is where we would create folders
    if not folder.is_dir():
        return f"{what} {path}: {folder} is not a folder"
    try:  # probe instead of os.access: it also sees read-only mounts and ACLs
        fd, probe = tempfile.mkstemp(prefix=".unforget-probe-", dir=folder)
    except OSError as exc:
        return f"{what} {path}: cannot write in {folder} ({exc.strerror or exc})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def input_problem(
    path: Path, *, what: str, folder: bool = False, either: bool = False
) -> str | None:
    """Why ``path`` cannot be read as a file (or a folder with ``folder``, or both with
    ``either``), or None."""
    if not path.exists():
        return f"{what} {path} does not exist"
    if either:
        return None
    if folder and not path.is_dir():
        return f"{what} {path} is a file; name a folder"
    if not folder and path.is_dir():
        return f"{what} {path} is a directory; name a file"
    return None


def check_plan(
    plan: IOPlan,
    *,
    must_exist: Iterable[str] = (),
    refuse: Mapping[str, bool] | None = None,
) -> None:
    """Check a command's paths before any work; raise :class:`InputError` once for all problems.

    Args:
        plan: the command's inputs, outputs and input folders.
        must_exist: names in ``plan.inputs`` that must be existing files.
        refuse: output name -> whether an existing file there is an error (no ``--force``).

    An output that names an input is refused whatever ``--force`` says, and the message never
    suggests ``--force`` for it.
    """
    bad = input_clashes(plan)
    problems = list(bad.values())
    for name in must_exist:
        problem = input_problem(plan.inputs[name], what=name, either=name in plan.directories)
        if problem:
            problems.append(problem)
    for name, out in plan.outputs.items():
        problem = (
            None
            if name in bad
            else output_problem(out, what=name, directory=name in plan.directories)
        )
        if problem:
            bad[name] = problem
            problems.append(problem)
    for name, no_force in (refuse or {}).items():
        out = plan.outputs[name]
        if no_force and name not in bad and out.exists():
            problems.append(
                f"{name} {out} already exists; pass {param('force', True)} to replace it"
            )
    if problems:
        raise InputError("; ".join(problems))


def receipt_inputs(ckpt: Path) -> dict[str, Path]:
    """The receipt beside ``ckpt`` and the input checkpoint it names (read by ``audit``)."""
    import json

    receipt = ckpt.with_name(ckpt.name + ".receipt.json")
    if not receipt.is_file():
        return {}
    found = {f"the receipt of {param('ckpt')}": receipt}
    try:
        given = Path(json.loads(receipt.read_text(encoding="utf-8")).get("input_path", ""))
    except (OSError, ValueError, AttributeError):
        return found
    for candidate in (given, ckpt.parent / given, ckpt.parent / given.name):
        if str(given) and candidate.is_file():
            found["the original model named in the receipt"] = candidate
            break
    return found


def check_audit_paths(
    *,
    ckpt: Path,
    manifest: Path,
    original: Path | None,
    retrained: tuple[Path, ...],
    config: Path | None,
    data: Path | None,
    outputs: Mapping[str, Path | None],
) -> None:
    """``audit``'s paths, before any model is loaded: inputs exist, ``--csv``/``--plot`` are
    writable files that name no input (the audited model, manifests, references, data)."""
    inputs: dict[str, Path] = {param("ckpt"): ckpt, param("manifest"): manifest}
    if original is not None:
        inputs[param("original")] = original
    inputs.update({f"{param('retrained', p)}": p for p in retrained})
    if config is not None:
        inputs[param("config")] = config
    inputs.update(receipt_inputs(ckpt))
    plan = IOPlan(
        inputs=inputs,
        outputs={name: path for name, path in outputs.items() if path is not None},
        folders={"the data folder": data} if data else {},
    )
    must = [param("ckpt"), param("manifest"), *([param("original")] if original else [])]
    check_plan(plan, must_exist=[*must, *(param("retrained", p) for p in retrained)])


def check_train_paths(
    out: Path,
    *,
    like: Path | None,
    exclude: Path | None,
    config: Path | None,
    spec: object,
    force: bool,
) -> None:
    """``train``'s paths before any training: ``--out`` is a writable file that names no input."""
    inputs = {
        name: path
        for name, path in (
            (param("like"), like),
            (param("exclude"), exclude),
            (param("config"), config),
        )
        if path is not None
    }
    data = getattr(getattr(spec, "data", None), "path", "")
    plan = IOPlan(
        inputs=inputs,
        outputs={param("out"): out},
        folders={"the data folder": Path(data)} if data else {},
    )
    check_plan(plan, must_exist=list(inputs), refuse={param("out"): not force})
