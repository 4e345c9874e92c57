#!/usr/bin/env bash
# Every GPU check and figure in one command, within a GPU visit's limits (scripts/gpu_suite.py
# says how). Results: at most three files in ${OUT:-build/gpu-suite-out}; scratch in build/gpu-suite.
#   scripts/gpu-suite.sh --pack                 here, before a visit: fills build/pydeps (carry it)
#   scripts/gpu-suite.sh                        on the GPU machine: every step that fits in 540 s
#   scripts/gpu-suite.sh --only step-trades,... --budget 240 --estimates figures.json
#   scripts/gpu-suite.sh --smoke                the rehearsal on a CPU (tests/test_gpu_suite.py)
# Runs from a checkout: PYTHONPATH is set by the driver; PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_suite.py "$@"
