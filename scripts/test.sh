#!/usr/bin/env bash
# Runs the test suite on the CPU; Triton kernels run through its interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
export TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor-cache"
export NUMBA_CACHE_DIR="$PWD/build/numba-cache"
exec .venv/bin/python -m pytest -q "$@"
