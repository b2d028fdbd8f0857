#!/usr/bin/env bash
# The main job on this machine (CPU, or a local GPU when jax sees one): a JERP run of the embedded default
# unless --config says otherwise. Sets up .venv on first use. Extra flags go to jerp_jax.main,
# e.g.  bash launch/local.sh --workdir=runs/grpo --config.jerp.mode=grpo
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
has_config=0
for arg in "$@"; do case "$arg" in --config=*|--config) has_config=1;; esac; done
if [ "$has_config" = 0 ]; then set -- --config=configs/default.py "$@"; fi
exec python -m jerp_jax.main "$@"
