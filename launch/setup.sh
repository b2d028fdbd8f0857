#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the pinned
# requirements. Idempotent: a stamp holding the hash of the requirement files skips the install
# when nothing changed, so every launcher can call it first. Source it to get the venv active.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${JERP_VENV:-$root/.venv}"

if [ ! -x "$venv/bin/python" ]; then
  py="${JERP_PYTHON:-}"
  if [ -z "$py" ]; then
    # `command -v` alone is not enough: a pyenv shim exists even when its version is not active.
    for cand in python3.11 python3.12 python3; do
      if "$cand" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
        py="$cand"; break
      fi
    done
  fi
  [ -n "$py" ] || { echo "setup: no Python >= 3.11 found on PATH (set JERP_PYTHON)" >&2; exit 1; }
  echo "setup: creating $venv with $($py --version 2>&1)" >&2
  "$py" -m venv "$venv"
fi

stamp="$venv/.jerp_requirements.sha256"
want="$(cat "$root/requirements.txt" "$root/requirements-nodeps.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements into $venv (first run takes a minute or two)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r "$root/requirements-nodeps.txt" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
