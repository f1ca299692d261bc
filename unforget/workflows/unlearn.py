"""``unforget apply``: unlearn a manifest's IDs and write a new checkpoint with a receipt.

Order of work is chosen so that bad input fails before anything expensive: method and options,
output path, checkpoint, data and manifest are all validated before the first gradient step;
the output is written atomically, and the receipt after it (the checkpoint is removed again if
the receipt cannot be written), so a failure never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unforget import __version__
from unforget.config.options import as_plain
from unforget.config.spec import relativise_data_path
from unforget.errors import GuardRailError, param
from unforget.io import checkpoint as ckpt_io
from unforget.io.fileio import (
    Staged,
    json_bytes,
    output_lock,
    remove_stale_temps,
)
from unforget.io.ledger import (
    covered,
    entries_to_json,
    find_manifest,
    load_or_create_key,
    new_entry,
)
from unforget.io.manifest import Manifest, canonical_ids, duplicate_count
from unforget.io.paths import IOPlan, check_plan
from unforget.io.receipt import Provenance, Receipt, Snapshot, orphaned_output, receipt_path
from unforget.methods import DEFAULT_METHOD, get_method, make_config, saved_states
from unforget.methods.base import GuardConfig, Method, Outcome, SavedState, UnlearnTask, saved_state
from unforget.runtime import distributed
from unforget.runtime.device import Precision, seed_everything
from unforget.runtime.progress import ProgressFn, silent
from unforget.training.evaluate import Outputs, predict, score
from unforget.training.loop import fit
from unforget.workflows.workspace import Deletion, Workspace, open_request


@dataclass(frozen=True, kw_only=True)
class ApplyRequest:
    ckpt: Path
    manifest: Path
    method: str = DEFAULT_METHOD
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    out: Path | None = None
    seed: int = 0
    force: bool = False
    config: Path | None = None
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)
    accept_data_change: bool = False
    guard: GuardConfig = dataclasses.field(default_factory=GuardConfig)


@dataclass(frozen=True)
class Assessment:
    """Does the forget set now look like data the model never saw? Accuracies are shares.

    ``unseen_accuracy`` is held-out accuracy after the run (on the removed classes' held-out rows
    when whole classes were removed: a model that never saw a class scores ~0 on it).
    ``tolerance`` is the gap still read as "alike": 3 points, or two standard errors of the
    difference of two proportions, sqrt(p(1−p)/n_F + p(1−p)/n_H), when that is wider (small
    forget sets). ``collapsed``: held-out accuracy on the kept classes fell more than
    ``COLLAPSE_DROP`` during the run, so the model lost more than the forget set.
    """

    forget_accuracy: float
    unseen_accuracy: float
    tolerance: float
    heldout_before: float
    heldout_after: float
    collapsed: bool

    @property
    def gap(self) -> float:
        """Forget minus unseen accuracy: > tolerance still remembered, < −tolerance over-forgot."""
        return self.forget_accuracy - self.unseen_accuracy

    @property
    def state(self) -> str:
        """``like_unseen``, ``remembered`` or ``over_forgotten``."""
        if self.gap > self.tolerance:
            return "remembered"
        return "over_forgotten" if self.gap < -self.tolerance else "like_unseen"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "forget_accuracy": round(self.forget_accuracy, 6),
            "unseen_accuracy": round(self.unseen_accuracy, 6),
            "tolerance": round(self.tolerance, 6),
            "heldout_accuracy_before": round(self.heldout_before, 6),
            "heldout_accuracy_after": round(self.heldout_after, 6),
            "collapsed": self.collapsed,
        }


COLLAPSE_DROP = 0.05  # held-out accuracy points lost during the run that count as a collapse


def assess(before: Snapshot, after: Snapshot) -> Assessment:
    """Compare forget accuracy with held-out accuracy after the run (see :class:`Assessment`)."""
    if after.removed_classes and after.other_classes and before.other_classes:
        unseen, kept_before, kept_after = (
            after.removed_classes,
            before.other_classes,
            after.other_classes,
        )
    else:
        unseen, kept_before, kept_after = after.heldout, before.heldout, after.heldout
    p = min(max(unseen.accuracy, 0.0), 1.0)
    se = float(np.sqrt(p * (1 - p) * (1 / max(after.forget.n, 1) + 1 / max(unseen.n, 1))))
    return Assessment(
        forget_accuracy=after.forget.accuracy,
        unseen_accuracy=unseen.accuracy,
        tolerance=max(0.03, 2 * se),
        heldout_before=kept_before.accuracy,
        heldout_after=kept_after.accuracy,
        collapsed=kept_before.accuracy - kept_after.accuracy > COLLAPSE_DROP,
    )


@dataclass(frozen=True)
class ApplyResult:
    """``receipt`` is None when the manifest was already applied (nothing written); then
    ``already_applied`` says by which earlier request, and ``assessment`` is None."""

    out: Path
    receipt_path: Path
    receipt: Receipt | None
    already_applied: str | None = None
    ledger_key_created: Path | None = None  # the ledger key file, when this run created it
    assessment: Assessment | None = None


def default_out(ckpt: Path) -> Path:
    """``model.safetensors`` -> ``model.unlearned.safetensors`` beside the input; a model
    directory ``minilm/`` -> ``minilm.unlearned/``."""
    if ckpt.is_dir():
        return ckpt.with_name(f"{ckpt.name}.unlearned")
    return ckpt.with_name(f"{ckpt.stem}.unlearned.safetensors")


def apply(
    request: ApplyRequest, *, precision: Precision, on_progress: ProgressFn = silent
) -> ApplyResult:
    """Run one deletion request end to end (see module docstring)."""
    method = get_method(request.method)
    config = make_config(method, request.options)
    out = request.out or default_out(request.ckpt)
    check_plan(apply_paths(request, out, data=None), must_exist=[param("ckpt")])
    ws, manifest, forget = open_request(
        request.ckpt,
        request.manifest,
        config=request.config,
        flags=request.flags,
        accept_data_change=request.accept_data_change,
    )
    check_plan(apply_paths(request, out, data=Path(ws.spec.data.path)))
    earlier = find_manifest(ws.ledger, manifest.sha256)
    if earlier is None and all(covered(ws.ledger, [ws.train.ids[r] for r in forget])):
        earlier = ws.ledger[-1] if ws.ledger else None
    if earlier is not None and not request.force:
        return ApplyResult(
            out=out,
            receipt_path=receipt_path(out),
            receipt=None,
            already_applied=f"{earlier.count} IDs by {earlier.method} at {earlier.time}",
        )
    if earlier is None:
        # IDs an earlier request already removed are not trained on any more (they are out of
        # the retain set); forgetting them again would only count them twice.
        fresh = ~np.asarray(covered(ws.ledger, [ws.train.ids[r] for r in forget]), dtype=bool)
        forget = forget[fresh] if ws.ledger else forget
    # One writer per output, from here to the receipt (under torchrun: rank 0 alone writes).
    writer = distributed.is_writer()
    with output_lock(out) if writer else contextlib.nullcontext():
        # A checkpoint left without its receipt by a killed run is unfinished: replace it.
        replace = request.force or orphaned_output(out)
        plan = apply_paths(request, out, data=Path(ws.spec.data.path))
        check_plan(plan, refuse={name: not replace for name in plan.outputs})
        for path in plan.outputs.values() if writer else ():  # only apply writes these
            remove_stale_temps(path)
        deletion = ws.deletion(forget)
        return _run(ws, request, manifest, deletion, out, method, config, precision, on_progress)


def apply_paths(request: ApplyRequest, out: Path, *, data: Path | None) -> IOPlan:
    """What ``apply`` reads and writes (see :mod:`unforget.io.paths`)."""
    inputs = {param("ckpt"): request.ckpt, param("manifest"): request.manifest}
    if request.config is not None:
        inputs[param("config")] = request.config
    states = saved_states()  # every method's state file: none may be overwritten or left stale
    for name, path in (
        *((f"the {s.label} of {param('ckpt')}", s.path(request.ckpt)) for s in states.values()),
        (f"the receipt of {param('ckpt')}", receipt_path(request.ckpt)),
    ):
        if path.exists():
            inputs[name] = path
    outputs = {
        param("out"): out,
        f"the receipt of {param('out')}": receipt_path(out),
        **{f"the {s.label} file of {param('out')}": s.path(out) for s in states.values()},
    }
    return IOPlan(
        inputs=inputs,
        outputs=outputs,
        folders={"the data folder": data} if data else {},
        # a HuggingFace model directory in gives a model directory out
        directories=frozenset({param("ckpt"), param("out")})
        if request.ckpt.is_dir()
        else frozenset(),
    )


def _run(
    ws: Workspace,
    request: ApplyRequest,
    manifest: Manifest,
    deletion: Deletion,
    out: Path,
    method: Method,
    config: Any,
    precision: Precision,
    on_progress: ProgressFn,
) -> ApplyResult:
    seed_everything(request.seed)
    hook = saved_state(method)
    task, evals = _task(ws, deletion, request, hook, precision, on_progress)
    outputs = _predict(task.model, evals, precision)
    before = _snapshot(outputs, deletion)
    # the method may reuse what was just measured on its own rows (never the evidence rows)
    task = dataclasses.replace(task, before={k: outputs[k] for k in ("forget", "retain")})
    # A method's saved state follows the checkpoint, measured with the weights BEFORE the run.
    carried = (hook, state) if hook and (state := hook.carry(task)) is not None else None
    start = time.perf_counter()
    outcome: Outcome = method.run(task, config)
    seconds = time.perf_counter() - start
    if not distributed.replicas_agree(outcome.model):
        raise GuardRailError(
            f"{request.method}: the processes ended with different weights (the method does not "
            "average its gradients across ranks); nothing was written: run it without torchrun"
        )
    after = _snapshot(_predict(outcome.model, evals, precision), deletion)
    if not distributed.is_writer():  # one writer: rank 0 writes the checkpoint and receipt
        return ApplyResult(out=out, receipt_path=receipt_path(out), receipt=None)
    return _write(
        ws,
        request,
        manifest,
        deletion,
        out,
        outcome,
        before,
        after,
        seconds,
        options=as_plain(config),
        precision=precision,
        carried=carried,
    )


def _task(
    ws: Workspace,
    deletion: Deletion,
    request: ApplyRequest,
    hook: SavedState | None,
    precision: Precision,
    on_progress: ProgressFn,
) -> tuple[UnlearnTask, dict[str, Any]]:
    model = ws.load_model(None, precision)
    if precision.compile:
        model.compile()  # in place: parameter names (and the checkpoint) stay as they are
    forget, retain = deletion.forget, deletion.retain

    def stream(rows: np.ndarray) -> Any:  # shuffled with the run's seed, the recipe's batches
        return ws.loader(
            ws.train,
            rows,
            device=precision.device,
            batch_size=ws.spec.recipe.batch_size,
            shuffle=True,
            seed=request.seed,
            num_workers=ws.spec.recipe.num_workers,
        )

    def reading(split: Any, rows: np.ndarray) -> Any:
        return ws.loader(
            split, rows, device=precision.device, num_workers=ws.spec.recipe.num_workers
        )

    def retrain() -> Any:
        fresh, _ = fit(
            ws.spec,
            split=ws.train,
            rows=retain,
            info=ws.info,
            precision=precision,
            seed=request.seed,
            encoder=ws.encoder,
            allow_plugin=ws.allow_plugin,
            on_progress=on_progress,
            task="retrain",
        )
        return fresh

    state_file = hook.path(ws.checkpoint.path) if hook is not None else None
    task = UnlearnTask(
        model=model,
        forget=stream(forget),
        retain=stream(retain),
        reference=reading(ws.heldout, deletion.reference),
        retain_eval=reading(ws.train, deletion.retain_sample(np.random.default_rng(request.seed))),
        forget_eval=reading(ws.train, forget),
        precision=precision,
        spec=ws.spec,
        seed=request.seed,
        n_forget=len(forget),
        n_retain=len(retain),
        guard=request.guard,
        removed_classes=deletion.removed_classes,
        retrain=retrain,
        saved_state=state_file if state_file is not None and state_file.is_file() else None,
        checkpoint_sha256=ws.checkpoint.sha256,
        on_progress=on_progress,
    )
    evals = {
        "forget": task.forget_eval,
        "retain": task.retain_eval,
        "heldout": reading(ws.heldout, deletion.evidence),
    }
    return task, evals


def _predict(model: Any, evals: dict[str, Any], precision: Precision) -> dict[str, Outputs]:
    return {name: predict(model, loader, precision=precision) for name, loader in evals.items()}


def _snapshot(outputs: dict[str, Outputs], deletion: Deletion) -> Snapshot:
    classes = list(deletion.removed_classes)
    removed = other = None
    if classes:
        mask = np.isin(outputs["heldout"].labels, classes)
        removed, other = score(outputs["heldout"], mask), score(outputs["heldout"], ~mask)
    return Snapshot(
        forget=score(outputs["forget"]),
        retain=score(outputs["retain"]),
        heldout=score(outputs["heldout"]),
        removed_classes=removed,
        other_classes=other,
    )


def _write(
    ws: Workspace,
    request: ApplyRequest,
    manifest: Manifest,
    deletion: Deletion,
    out: Path,
    outcome: Outcome,
    before: Snapshot,
    after: Snapshot,
    seconds: float,
    *,
    options: dict[str, Any],
    precision: Precision,
    carried: tuple[SavedState, Any] | None = None,
) -> ApplyResult:
    import torch

    forget = deletion.forget
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    reference_ids = tuple(ws.heldout.ids[r] for r in deletion.reference)
    uses_reference = "reference" in get_method(request.method).info.needs
    reference_ids = reference_ids if uses_reference else ()
    provenance = Provenance(
        tool=f"unforget {__version__}",
        command="apply",
        method=request.method,
        options=options,
        seed=request.seed,
        torch=str(torch.__version__),
        device=str(precision.device),
        time=now,
        input_sha256=ws.checkpoint.sha256,
        manifest_sha256=manifest.sha256,
        manifest_count=len(forget),
        manifest_duplicates=duplicate_count(
            manifest, canonical_ids(manifest.ids, integer=ws.train.id_is_int, path=manifest.path)
        ),
        data_fingerprint=ws.fingerprint,
        data_changed=ws.data_changed,
        reference_rows=len(reference_ids),
        reference_ids_sha256=hashlib.sha256("\n".join(reference_ids).encode()).hexdigest(),
        world_size=distributed.world().size,
        backend=distributed.world().backend,
    )
    key, key_created = load_or_create_key()
    entry = new_entry(
        [ws.train.ids[r] for r in forget],
        manifest_sha256=manifest.sha256,
        method=request.method,
        time=now,
        key=key,
    )
    # The output records the data it was made from (also for checkpoints trained elsewhere
    # that had no fingerprint, and after --accept-data-change), so later changes are caught.
    spec = ws.spec.replace(train_fingerprint=ws.fingerprint)
    # Relative to the folder the written weights sit in (inside the directory for a model dir).
    spec = relativise_data_path(spec, base=out.resolve() if ws.model_dir else out.resolve().parent)
    metadata: dict[str, Any] = {
        k: v
        for k, v in ws.checkpoint.metadata.items()
        if k.startswith("unforget.") and k not in {ckpt_io.KEY_ALIASES, "unforget.format"}
    }
    metadata.update(
        {
            ckpt_io.KEY_SPEC: spec.to_json(),
            ckpt_io.KEY_PROVENANCE: provenance.as_dict(),
            ckpt_io.KEY_LEDGER: entries_to_json([*ws.ledger, entry]),
        }
    )
    state = ckpt_io.state_dict_cpu(outcome.model)
    staged: list[Staged] = []
    try:
        if ws.model_dir is not None:  # a HuggingFace directory in, a loadable directory out
            from unforget.workflows.export_hf import save_model_dir

            receipt_path(out).unlink(missing_ok=True)  # never left describing other weights
            sha = save_model_dir(
                out, state, source=ws.model_dir, metadata=metadata, force=request.force
            )
        else:
            staged.append(Staged(out, ckpt_io.checkpoint_bytes(state, metadata=metadata)))
            sha = staged[0].sha256  # of the bytes written, never re-read from the path
        state_file = None
        if carried is not None:
            hook, value = carried
            state_file = Staged(hook.path(out), hook.to_bytes(value, checkpoint_sha256=sha))
            staged.append(state_file)
        names = ws.spec.class_names or ws.info.class_names
        receipt = Receipt(
            provenance=provenance,
            output_path=str(out),
            output_sha256=sha,
            input_path=str(request.ckpt.resolve()),
            before=before,
            after=after,
            steps=outcome.steps,
            stop_reason=outcome.stop_reason,
            seconds=seconds,
            removed_classes=tuple(names[c] for c in deletion.removed_classes),
            method_details=outcome.details,
            reference_ids=reference_ids,
        )
        staged.append(Staged(receipt_path(out), json_bytes(receipt.as_dict())))
        checkpoint = staged[0] if ws.model_dir is None else None
        _commit(checkpoint, state_file, staged[-1], out=out)
    except BaseException:
        for stage in staged:
            stage.discard()
        raise
    return ApplyResult(
        out=out,
        receipt_path=receipt_path(out),
        receipt=receipt,
        ledger_key_created=key.path if key_created else None,
        assessment=assess(before, after),
    )


def _commit(checkpoint: Staged | None, state: Staged | None, receipt: Staged, *, out: Path) -> None:
    """Make the staged files visible: checkpoint, the method's state file, then receipt.

    A kill at any point leaves the old checkpoint and receipt, or a checkpoint whose receipt is
    missing (the old receipt is removed first, so it can never describe the new bytes), which
    :func:`orphaned_output` recognises and a re-run replaces. (A model directory is already in
    place, written by ``save_model_dir``.)
    """
    receipt_path(out).unlink(missing_ok=True)
    if checkpoint is not None:
        checkpoint.commit()
    if state is not None:
        state.commit()
    for hook in saved_states().values():  # never leave an older state file beside new weights
        if state is None or hook.path(out) != state.target:
            hook.path(out).unlink(missing_ok=True)
    receipt.commit()
