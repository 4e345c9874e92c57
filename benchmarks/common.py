"""What every benchmark shares: where it ran (device, torch, git revision), device
synchronisation, timing with warm-up, mean and spread, CPU threads, and writing the JSON report."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from engine.outputs import claim_files, write_json_output
from engine.runtime import device_name
from kernels import dispatch


REVISION_ENV = "BIAMAT_REVISION"


def git_revision() -> str:
    """The revision the figures belong to: $BIAMAT_REVISION where set (a copied tree has no
    `.git`: the GPU suite sets it from the file its `--pack` wrote), else `git rev-parse --short
    HEAD` of this checkout, else "unknown"."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    """The fields every report opens with: device name, torch version, git revision."""
    return {"device": device_name(device), "torch": torch.__version__, "git_revision": git_revision()}


def sync(device: torch.device) -> None:
    """Waits for queued device work, so that a timer stopped after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 0,
               loops: int = 1) -> list[float]:
    """Seconds per call of `repeats` timings, each of `loops` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        sync(device)
        samples.append((time.perf_counter() - start) / loops)
    return samples


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def set_cpu_threads(threads: int) -> None:
    # torch and numba get the same number of CPU threads so that comparisons are even
    torch.set_num_threads(threads)
    if dispatch.available("numba"):
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def write_report(report: dict, out: str | Path | None) -> None:
    """Writes the report as indented JSON, atomically (creating the folder); nothing when `out` is None."""
    if out is None:
        return
    claim_files([out], "bench", overwrite=True)  # never a file bench did not write (engine/outputs.py)
    write_json_output(out, "bench", report)
