"""Device, precision, compile mode and kernel choice, resolved once from the machine.

nanoGPT's habit: autocast is a `nullcontext` where it does nothing, the GradScaler is enabled
only for fp16, and nothing below this module asks which device it is on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from engine.config import COMPILE_MODES, ConfigError, RuntimeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    compile: bool
    channels_last: bool
    kernels: str  # torch | numba | triton, or auto where auto picks per kernel (kernels.dispatch.CPU_AUTO)
    compile_mode: str | None = None  # torch.compile's mode when compile is on; None: its default
    cudnn_benchmark: bool = False
    compile_dynamic: bool | None = None  # torch.compile's dynamic; None: its automatic choice

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> Callable[[], ContextManager]:
        dtype = self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext
        return functools.partial(torch.autocast, device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Loss scaling only matters for fp16: bf16 has fp32's exponent range.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def device_name(device: torch.device, threads: bool = False) -> str:
    """The GPU's name, or the CPU's model and core count (/proc/cpuinfo where there is one): what
    reports and benchmarks say they ran on. `threads` adds torch's CPU thread count, which sets
    the speed of a CPU run."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = f"{model}, {os.cpu_count()} cores"
    return f"{name}, {torch.get_num_threads()} threads" if threads else name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device = {name!r} but this machine has no CUDA device; use --device cpu")
    return device


def _auto_precision(device: torch.device) -> str:
    if device.type != "cuda":
        return "fp32"
    # V100 (compute capability 7.x) has no bf16 tensor cores: fp16 with a GradScaler there.
    return "bf16" if torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def _auto_kernels(device: torch.device) -> str:
    from kernels.dispatch import auto_for_device

    return auto_for_device(device)


def _compile_dynamic(choice: str, compile_on: bool, drop_last: bool) -> bool | None:
    if choice != "auto":
        return choice == "true"
    # Static shapes only where they are known to be few: with drop_last every training batch has
    # one shape; without it torch's automatic choice keeps a short last batch from compiling a
    # new static graph each time a new size turns up.
    return False if compile_on and drop_last else None


def resolve_runtime(cfg: RuntimeConfig, drop_last: bool = False) -> tuple[Runtime, RuntimeConfig]:
    """The runtime for this machine, and the config with every `auto` replaced by its choice
    (what config.toml records, so a run says exactly how it ran). `drop_last`: the training
    data's (data.drop_last), which `compile_dynamic = auto` follows."""
    device = resolve_device(cfg.device)
    precision = _auto_precision(device) if cfg.precision == "auto" else cfg.precision
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 autocast on CPU is slow on most CPUs; consider runtime.precision=fp32")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("runtime.precision = fp16 needs a CUDA device (fp16 autocast with a GradScaler)")
    compile_on = device.type == "cuda" if cfg.compile == "auto" else cfg.compile != "off"
    compile_mode = cfg.compile if cfg.compile in COMPILE_MODES else None
    kernels = _auto_kernels(device) if cfg.kernels == "auto" else cfg.kernels
    if os.environ.get("BIAMAT_KERNELS"):
        kernels = os.environ["BIAMAT_KERNELS"]  # the global switch wins; record what really ran
    cudnn_benchmark = cfg.cudnn_benchmark and device.type == "cuda" and not cfg.deterministic
    dynamic = _compile_dynamic(cfg.compile_dynamic, compile_on, drop_last)
    if compile_on and dynamic is False and not drop_last:
        log.info("runtime.compile_dynamic = false without data.drop_last: the short last batch of an "
                 "epoch compiles one more static variant of the trunk")
    runtime = Runtime(device, precision, compile_on, cfg.channels_last, kernels, compile_mode, cudnn_benchmark,
                      dynamic)
    resolved = dataclasses.replace(
        cfg, device=str(device), precision=precision, kernels=kernels,
        compile=compile_mode or ("on" if compile_on else "off"), cudnn_benchmark=cudnn_benchmark,
        compile_dynamic={True: "true", False: "false", None: "auto"}[dynamic],
    )
    return runtime, resolved


def apply_backend_flags(runtime: Runtime) -> None:
    """Sets the process-wide backend switches the runtime asks for; called once where a run or a
    benchmark row starts, so the choice is the config's and is recorded with it."""
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a step draws from, in types `torch.load(weights_only=True)` accepts."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
