#!/usr/bin/env bash
# The test suite, as CI runs it. Sets up .venv on first use. Extra arguments go to pytest,
# e.g.  bash launch/test.sh tests/model -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec python -m pytest "$@"
