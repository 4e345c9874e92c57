"""scripts/gpu-suite.sh --smoke: the GPU suite's every step, on the CPU with tiny sizes, so the
script that GPU visits depend on cannot rot between them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = ["environment", "gpu tests", "bench step (AT and TRADES)", "bench kernels", "bench loader (resident)",
         "bench eval", "train, Ctrl-C, resume", "eval the trained model",
         "bench step levers (reduce-overhead, cudnn autotune)"]


def test_the_smoke_suite_runs_every_step_and_summarises_it(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu-suite.sh"), "--smoke"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    rows = [line.split("|")[1:3] for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [name.strip() for name, _ in rows] == STEPS, summary
    assert all(status.strip() == "ok" for _, status in rows), summary
    assert "revision `" in summary and "img/s" in summary and "clean" in summary
    # The interrupted run was resumed to its end, and evaluated.
    train_log = next((tmp_path / "logs").glob("*train*")).read_text()
    assert "interrupted (rc 130); resuming" in train_log, train_log[-2000:]
    assert (tmp_path / "run" / "eval.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_full_suite_refuses_a_machine_without_cuda(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu-suite.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--smoke" in done.stderr
