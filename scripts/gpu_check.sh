#!/usr/bin/env bash
# GPU check (DESIGN §6): train, apply and audit on the shipped sample on CUDA with AMP, and the
# same on CPU; the audit verdicts (exit codes) must agree. Skips cleanly (exit 0) without a GPU.
#
#   scripts/gpu_check.sh [OUT_DIR]          # default: a temporary folder
#
# Writes OUT_DIR/summary.json (accuracies, verdicts and wall times per device) and exits 1 when
# a verdict differs between CPU and CUDA, or when a command fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA GPU here; skipped"
    exit 0
fi
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
export UNFORGET_CACHE="$out/cache"
sample=sample_data
cat > "$out/small.toml" <<TOML
[model]
name = "mlp"
kwargs = { hidden = [256] }
[data]
path = "$PWD/$sample/fashion-mnist"
[recipe]
epochs = 10
batch_size = 128
lr = 0.003
seed = 0
TOML

run() {  # run NAME CMD...: the command's JSON to $out/NAME.json, its exit code to $out/NAME.rc
    local name=$1; shift
    local start=$SECONDS rc=0
    "$@" --json > "$out/$name.json" 2> "$out/$name.err" || rc=$?
    echo "$rc $((SECONDS - start))" > "$out/$name.rc"
    echo "gpu_check: $name exit $rc in $((SECONDS - start)) s"
}

for dev in cpu cuda; do
    run "train-$dev" unforget train --config "$out/small.toml" --out "$out/small-$dev.safetensors" \
        --device "$dev" --force
    run "apply-$dev" unforget apply --ckpt "$sample/model.safetensors" \
        --forget "$sample/forget_random10.txt" --out "$out/unlearned-$dev.safetensors" \
        --device "$dev" --force
    run "audit-original-$dev" unforget audit --ckpt "$sample/model.safetensors" \
        --forget "$sample/forget_random10.txt" --refs 2 --device "$dev"
    run "audit-unlearned-$dev" unforget audit --ckpt "$out/unlearned-$dev.safetensors" \
        --forget "$sample/forget_random10.txt" --refs 2 --device "$dev"
done
run "train-cuda-compile" unforget train --config "$out/small.toml" \
    --out "$out/small-compiled.safetensors" --device cuda --compile --force

python - "$out" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary, problems = {}, []
for rc_file in sorted(out.glob("*.rc")):
    name = rc_file.stem
    code, seconds = map(int, rc_file.read_text().split())
    text = (out / f"{name}.json").read_text().strip()
    data = json.loads(text) if text else {}
    row = {"exit": code, "seconds": seconds}
    if name.startswith("train"):
        row["heldout_accuracy"] = data.get("heldout", {}).get("accuracy")
    elif name.startswith("apply"):
        after = data.get("metrics", {}).get("after", {})
        row.update({k: v.get("accuracy") for k, v in after.items()}, stop=data.get("stop_reason"))
    else:
        row["verdict"] = data.get("verdict", {}).get("status", data.get("verdict"))
    summary[name] = row
    if name.startswith(("train", "apply")) and code != 0:
        problems.append(f"{name} failed with exit {code} (see {name}.err)")
for audit in ("audit-original", "audit-unlearned"):
    cpu, cuda = summary[f"{audit}-cpu"]["exit"], summary[f"{audit}-cuda"]["exit"]
    if cpu != cuda or cpu in (1, 2):
        problems.append(f"{audit}: exit {cpu} on CPU but {cuda} on CUDA")
for name in ("train-cpu", "train-cuda", "train-cuda-compile"):
    acc = summary[name].get("heldout_accuracy")
    if acc is None or abs(acc - summary["train-cpu"]["heldout_accuracy"]) > 0.02:
        problems.append(f"{name}: held-out accuracy {acc} is not within 2 points of CPU")
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
if problems:
    print("gpu_check: FAILED\n  " + "\n  ".join(problems))
    sys.exit(1)
print("gpu_check: OK (same verdicts on CPU and CUDA)")
PY
