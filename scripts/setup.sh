#!/usr/bin/env bash
# Create (or reuse) ./.venv with the CPU build of torch 2.13.0 and evosparse installed editable.
# Sourced by train.sh and test.sh; safe to run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVOSPARSE_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
# torch first and pinned: a bare "torch" requirement would pull the CUDA build (gigabytes).
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e "$root[test]"
