"""How a loader backend reads: one set of options that every backend accepts.

The engine builds one `LoaderOptions` from its config and hands it to whichever backend the run
names, so nothing above the loaders needs to know that FFCV calls its threads workers and DALI
calls them num_threads, or that only the resident backend runs a crop/flip kernel of ours. An
option a backend has no use for is accepted and ignored, as each field says.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from kernels.errors import InputError


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    workers: int | None = None
    """CPU threads that decode and augment: FFCV's worker threads (None or 0: one per core this
    process may use, `available_cores`),
    DALI's num_threads (None: 2; DALI needs at least one). The resident backend ignores it: its
    batches are gathered and augmented on the device, with no worker threads."""
    kernel_impl: str = "auto"
    """Crop/flip kernel of the resident backend: auto, triton, numba or torch, checked by
    kernels.dispatch when it runs (where BIAMAT_KERNELS may override it). FFCV and DALI augment
    inside their own pipelines and ignore it."""
    pad: int = 4
    """Zero padding, in pixels, around the random crop of training batches; every backend."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise InputError(f"loader workers must be >= 0 (or None for the backend's default), "
                             f"got {self.workers}; set data.num_workers")
        if self.pad < 0:
            raise ValueError(f"loader pad must be non-negative, got {self.pad}")


def available_cores() -> int:
    """The cores this process may use, shared among torchrun's ranks on this machine: its CPU
    affinity (which `taskset` and container cpusets narrow) capped by a cgroup CPU quota (docker
    --cpus). os.cpu_count() counts the whole machine: a loader sized by it in a 4-core container
    on a 128-core host runs 128 threads that fight over 4 cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: the affinity is the limit
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or "1")
    return max(1, cores // max(local_ranks, 1))
