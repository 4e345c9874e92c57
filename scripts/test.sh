#!/usr/bin/env bash
# Runs the test suite on the CPU; Triton kernels run through its interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
# Tests use tiny tensors: one thread avoids thread start-up and contention costs that dwarf them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor-cache"
export NUMBA_CACHE_DIR="$PWD/build/numba-cache"
# `slow` tests (marker in pyproject.toml) stay out of the default run, which must fit 10 minutes on
# 2 cores; `bash scripts/test.sh -m slow` runs them.
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
