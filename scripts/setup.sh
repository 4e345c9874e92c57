#!/usr/bin/env bash
# Sets up a fresh checkout: system libraries FFCV builds against, then `.venv` with the engine
# and every extra that installs on this machine. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

# FFCV compiles against libturbojpeg and OpenCV; apt only runs when a header is missing.
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! dpkg -s libturbojpeg0-dev libopencv-dev pkg-config >/dev/null 2>&1; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q pkg-config libturbojpeg0-dev libopencv-dev
fi
# Fashion-MNIST (IDX files in /usr/share/datasets/fashion-mnist): real data without a download.
# Optional: where the package is missing from the distribution, set-up goes on without it.
# The package lists may predate it: one `apt-get update` before giving up.
fmnist() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist; }
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    fmnist || { $SUDO apt-get update -q && fmnist; } \
        || echo "note: dataset-fashion-mnist is not installable here; \`prepare fashion-mnist DIR\` reads the" \
                "four IDX files from github.com/zalandoresearch/fashion-mnist instead" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"

# The CPU build of torch: an unpinned `torch` may pull a multi-GB CUDA build. On a GPU machine
# set TORCH_SPEC (for example TORCH_SPEC=torch) to take the CUDA build instead.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    $PIP install "${TORCH_SPEC:-torch==2.13.0}"
fi
# ffcv's setup.py imports numpy and pkgconfig at build time, so they go in first.
$PIP install numpy pkgconfig setuptools wheel
$PIP install --no-build-isolation -e ".[test,ffcv,dali,autoattack,triton,analyze,tensorboard,study]"
# ffcv compiles its C extension against libturbojpeg/OpenCV at install time; fail here, not at
# the first `--loader ffcv` run, when that went wrong.
.venv/bin/python -c "import ffcv.loader, ffcv.libffcv, cv2" \
    || { echo "ffcv 1.0.2 did not install: check pkg-config libturbojpeg0-dev libopencv-dev" >&2; exit 1; }
echo "set-up done: .venv/bin/biamat-engine is ready"
