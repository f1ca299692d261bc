"""CPU seconds an ``unforget`` command spends before its first training step (issue 13: ≤ 3 s).

Runs the real CLI (``python -m unforget …``) in a fresh process N times; a wrapper records
``time.process_time()`` (CPU of the whole process since it started, interpreter start-up
included) when the first :class:`unforget.training.step.TrainStep` call begins, prints it and
ends the process there. Also reports the CPU after the imports alone (``import unforget.cli``
and the workflow module) and the heaviest imports from ``python -X importtime``.

    OMP_NUM_THREADS=1 python scripts/startup_cpu.py --runs 5 -- apply --ckpt \\
        sample_data/model.safetensors --forget sample_data/forget_random10.txt \\
        --method proxy-distill --out /tmp/x.safetensors --force

CPU time, not wall time: other processes on a shared machine slow the wall clock, not this.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

FIRST_STEP = """
import os, sys, time
import unforget.training.step as step
original = step.TrainStep.__call__
def first(self, *args, **kwargs):
    sys.stderr.write("FIRST_STEP_CPU %.4f\\n" % time.process_time())
    sys.stderr.flush()
    os._exit(0)
step.TrainStep.__call__ = first
sys.argv = ["unforget", *sys.argv[1:]]
import runpy
runpy.run_module("unforget", run_name="__main__")
"""

IMPORTS = """
import time
import unforget.cli
import unforget.workflows.unlearn
import unforget.workflows.train
print("%.4f" % time.process_time())
"""


def first_step_cpu(args: list[str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_STEP, *args], capture_output=True, text=True, check=False
    )
    found = re.search(r"FIRST_STEP_CPU ([0-9.]+)", done.stderr)
    if found is None:
        raise SystemExit(f"no training step reached:\n{done.stderr[-2000:]}")
    return float(found.group(1))


def import_cpu() -> float:
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True)
    return float(done.stdout.strip())


def heaviest_imports(top: int) -> list[tuple[str, float]]:
    """Packages by cumulative import wall time (``-X importtime``, the largest entry of each
    top-level package at any depth), in seconds."""
    code = "import unforget.cli, unforget.workflows.unlearn"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    best: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            root = parts[2].strip().split(".")[0]
            best[root] = max(best.get(root, 0.0), int(parts[1]) / 1e6)
    return sorted(best.items(), key=lambda r: -r[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the unforget command")
    ns = parser.parse_args()
    command = [a for a in ns.command if a != "--"] or [
        "apply",
        "--ckpt",
        "sample_data/model.safetensors",
        "--forget",
        "sample_data/forget_random10.txt",
        "--method",
        "proxy-distill",
        "--out",
        "/tmp/startup_cpu.safetensors",
        "--force",
    ]
    first = [first_step_cpu(command) for _ in range(ns.runs)]
    imports = [import_cpu() for _ in range(ns.runs)]
    print(
        json.dumps(
            {
                "command": command,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "runs": ns.runs,
                "first_step_cpu_s": [round(v, 3) for v in first],
                "first_step_cpu_mean_s": round(statistics.mean(first), 3),
                "first_step_cpu_std_s": round(statistics.stdev(first), 3) if ns.runs > 1 else 0.0,
                "imports_cpu_mean_s": round(statistics.mean(imports), 3),
                "imports_cpu_std_s": round(statistics.stdev(imports), 3) if ns.runs > 1 else 0.0,
                "heaviest_imports_wall_s": heaviest_imports(8),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
