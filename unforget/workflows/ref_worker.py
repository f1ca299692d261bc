"""Reference-training worker processes: ``python -m unforget.workflows.ref_worker JOB.json``.

Subprocesses of the same Python rather than ``multiprocessing``: nothing is pickled (the job is
JSON, the rows a ``.npy`` read with ``allow_pickle=False``), and the caller's ``__main__`` is
never re-imported, so ``--jobs`` works from any script. A worker trains one reference with
:func:`unforget.workflows.references.train_one`, which writes the weights and the sidecar
atomically; the parent verifies both before use. A failure is one line on the worker's stderr
and its exit code, re-raised in the parent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from unforget.errors import EXIT_FAILURE, InputError, UnforgetError
from unforget.workflows.references import Job, Record, paths, train_one


def run_workers(jobs_list: list[Job], *, jobs: int, threads: int) -> list[Record]:
    """Run each job in a subprocess, at most ``jobs`` at a time, ``threads`` torch threads each.

    Raises:
        UnforgetError (or InputError for a worker's exit 2): the first failure; the other
        workers started here are stopped first.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="unforget-refs-") as tmp:
        rows_file = Path(tmp) / "rows.npy"
        np.save(rows_file, jobs_list[0].rows, allow_pickle=False)
        pending = list(enumerate(jobs_list))
        running: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        seconds: dict[int, float] = {}
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    i, job = pending.pop(0)
                    spec_file = Path(tmp) / f"job{i}.json"
                    if job.rows is not jobs_list[0].rows:
                        np.save(Path(tmp) / f"rows{i}.npy", job.rows, allow_pickle=False)
                        rows = Path(tmp) / f"rows{i}.npy"
                    else:
                        rows = rows_file
                    spec_file.write_text(_with_threads(job, threads).to_json(rows))
                    cmd = [sys.executable, "-m", "unforget.workflows.ref_worker", str(spec_file)]
                    with open(Path(tmp) / f"job{i}.err", "wb") as err:  # no pipe to fill up
                        proc = subprocess.Popen(cmd, env=env, stderr=err)
                    running[i] = (proc, time.perf_counter())
                for i, (proc, started) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[i]
                    _raise_on_failure(proc, Path(tmp) / f"job{i}.err")
                    seconds[i] = time.perf_counter() - started
                time.sleep(0.05)
        finally:
            for proc, _ in running.values():
                proc.terminate()
                proc.wait()
    return [_record(job, seconds[i]) for i, job in enumerate(jobs_list)]


def _with_threads(job: Job, threads: int) -> Job:
    from dataclasses import replace

    return replace(job, threads=threads)


def _raise_on_failure(proc: subprocess.Popen[bytes], err_file: Path) -> None:
    if proc.returncode == 0:
        return
    err = err_file.read_text(errors="replace")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else f"exit code {proc.returncode}"
    if proc.returncode == InputError.exit_code:
        raise InputError(f"reference worker: {message}")
    raise UnforgetError(f"reference worker failed: {message}")


def _record(job: Job, seconds: float) -> Record:
    import json

    _, sidecar = paths(job.cache_dir, job.identity)
    meta = json.loads(sidecar.read_text())
    return Record(
        job.identity,
        meta["sha256"],
        meta["weights_sha256"],
        "trained",
        seconds,
        threads=meta["threads"],
    )


def main(argv: list[str]) -> int:
    """Train the job in ``argv[0]``; errors as one line on stderr and their exit code."""
    try:
        train_one(Job.from_json(Path(argv[0]).read_text()))
    except UnforgetError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the worker's boundary: one line, exit 1
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
