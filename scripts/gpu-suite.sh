#!/usr/bin/env bash
# Every GPU check and figure in one command; results under ${OUT:-build/gpu-suite} (summary.md).
#   scripts/gpu-suite.sh           the full suite on a CUDA machine (about 8 minutes on an H100)
#   scripts/gpu-suite.sh --smoke   the same steps on the CPU with tiny sizes (tests/test_gpu_suite.py)
#   scripts/gpu-suite.sh --pack    copy pure-Python dependencies a bare GPU machine lacks into build/pydeps
# Runs from a checkout: PYTHONPATH is set by the driver; PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_suite.py "$@"
