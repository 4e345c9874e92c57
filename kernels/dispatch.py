"""Which implementation of a kernel runs: triton, numba or the plain-torch reference.

`auto` picks Triton for CUDA tensors (when triton imports); for CPU tensors it picks, per
kernel, the implementation `bench kernels` measured faster on the CPU (CPU_AUTO: numba where it
won, when numba imports); the torch reference otherwise. The environment variable BIAMAT_KERNELS,
set to an implementation name, overrides every call, including calls that name an implementation,
so one switch can force the reference everywhere while a fast kernel is under suspicion.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from kernels.errors import InputError

IMPLS = ("triton", "numba", "torch")
CHOICES = ("auto",) + IMPLS
ENV_VAR = "BIAMAT_KERNELS"

# What `auto` runs on a CPU tensor, per kernel. It follows the CPU kernels table of
# docs/benchmarks.md ("Kernels", the run at revision fb023ff, 1 thread): numba only where it beat
# the eager torch reference at every measured size (pgd_step 4.7-5.3x, crop_flip 5.2-5.6x); the
# reference where numba lost at some size (confidence_mask: 2.8x at 10 classes, 0.59x at 100) or at
# all (routed_loss: 0.50-0.96x, its softmax slower than torch's vectorised exp).
CPU_AUTO = {
    "confidence_mask": "torch",
    "routed_loss": "torch",
    "pgd_step": "numba",
    "crop_flip": "numba",
}

_INSTALL_HINT = {
    "triton": "install it with `pip install triton` (CUDA builds of torch bring it)",
    "numba": "install it with `pip install numba`",
}


@functools.cache
def available(name: str) -> bool:
    """True when the optional package `name` imports (checked once per process)."""
    try:
        importlib.import_module(name)
    except Exception:  # a broken install (missing CUDA libs, ABI mismatch) counts as absent
        return False
    return True


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _requested(impl: str) -> str:
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced and forced != "auto":
        if forced not in IMPLS:
            raise InputError(f"{ENV_VAR}={forced!r} is not a kernel implementation; expected one of {CHOICES}")
        return forced
    if impl not in CHOICES:
        raise ValueError(f"impl={impl!r} is not a kernel implementation; expected one of {CHOICES}")
    return impl


def _auto(device: torch.device, kernel: str) -> str:
    if device.type == "cuda" and available("triton"):
        return "triton"
    if device.type == "cpu" and CPU_AUTO[kernel] == "numba" and available("numba"):
        return "numba"
    return "torch"


def auto_for_device(device: torch.device) -> str:
    """What `auto` amounts to on `device`: the one implementation it runs for every kernel there,
    or 'auto' where it picks per kernel (CPU with numba installed), for a run's record."""
    picks = {_auto(device, kernel) for kernel in CPU_AUTO}
    return picks.pop() if len(picks) == 1 else "auto"


def _check_usable(name: str, device: torch.device) -> None:
    if name == "torch":
        return
    if not available(name):
        raise ModuleNotFoundError(f"kernel implementation {name!r} needs the package {name!r}: {_INSTALL_HINT[name]}")
    # Reached from BIAMAT_KERNELS or runtime.kernels naming a kernel the run's device cannot run.
    if name == "numba" and device.type != "cpu":
        raise InputError(
            f"numba kernels run on CPU tensors, got a tensor on {device}; use impl='triton' or impl='torch' "
            f"(or unset {ENV_VAR})"
        )
    if name == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreter_on()):
        raise InputError(
            f"Triton kernels run on CUDA tensors, got a tensor on {device}; set TRITON_INTERPRET=1 to run them on "
            f"CPU through Triton's interpreter (slow, for tests) or use impl='numba' or impl='torch'"
        )


def resolve(impl: str, tensor: torch.Tensor, kernel: str) -> str:
    """The implementation that `kernel` (a key of CPU_AUTO) called with `impl` on `tensor` runs:
    'triton', 'numba' or 'torch'. Raises with the fix when the requested one cannot run on that
    tensor's device."""
    name = _requested(impl)
    if name == "auto":
        name = _auto(tensor.device, kernel)
    _check_usable(name, tensor.device)
    return name
