#!/usr/bin/env bash
# The GPU check (see scripts/gpu_check.py): device tests, every method on both backends on the GPU vs the CPU,
# kill + resume on the GPU, one table. Runs with the Python that has a CUDA build of torch: PYTHON (default
# python3), not the CPU-only virtual environment of scripts/setup.sh. Extra arguments go to gpu_check.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$root/scripts/gpu_check.py" "$@"
