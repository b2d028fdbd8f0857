#!/usr/bin/env bash
# The benchmarks on a lent accelerator (one GPU), as one command that fits its time budget:
#   bash benchmarks/accelerator.sh [OUT_DIR]
# Nothing is downloaded there: the venv travels with the tree (or is installed from a wheel cache
# beforehand), and the embedded model ships in it. Each benchmark's output and its JSON line go
# to OUT_DIR (default: $OUT, else runs/accelerator); one that fails is reported and the rest run.
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

status=0
run() {  # name, seconds, command...
  local name="$1" limit="$2"; shift 2
  echo "=== $name" | tee -a "$out/summary.txt"
  if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
    tail -n 1 "$out/$name.log" | tee -a "$out/summary.txt"
  else
    echo "$name failed or timed out (exit $?); see $name.log" | tee -a "$out/summary.txt"
    status=1
  fi
}
run generation 150 "$py" benchmarks/generation.py --skip_torch --batch_sizes=1,8,32
run learner 120 "$py" benchmarks/learner.py --length=320 --rows=8
run learner_512 120 "$py" benchmarks/learner.py --length=512 --rows=16 --config.rl.learner.micro_batch_size=8
run grammar 90 "$py" benchmarks/grammar.py
run rollout 180 "$py" benchmarks/rollout.py --rounds=1
exit $status
