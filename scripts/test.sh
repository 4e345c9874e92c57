#!/usr/bin/env bash
# Runs the test suite on the CPU; Triton kernels run through its interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
# Tests use tiny tensors: one thread avoids thread start-up and contention costs that dwarf them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor-cache"
export NUMBA_CACHE_DIR="$PWD/build/numba-cache"
exec .venv/bin/python -m pytest -q "$@"
