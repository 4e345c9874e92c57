"""`biamat-engine info`: versions, devices, which extras work, and the presets."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform

from rich.markup import escape
from rich.table import Table

from cli.console import console

EPILOG = """[bold]Example[/]

  biamat-engine info
"""

# (extra, module to import, what it enables, install hint)
EXTRAS = [
    ("ffcv", "ffcv", "--loader ffcv", "pip install 'biamat-engine[ffcv]' (needs libturbojpeg and OpenCV headers)"),
    ("dali", "nvidia.dali", "--loader dali", "pip install 'biamat-engine[dali]'"),
    ("autoattack", "pyautoattack", "eval --attacks aa", "pip install 'biamat-engine[autoattack]'"),
    ("triton", "triton", "Triton kernels on CUDA", "pip install 'biamat-engine[triton]'"),
    ("tensorrt", "torch_tensorrt", "eval --backend tensorrt", "pip install 'biamat-engine[tensorrt]' (CUDA only)"),
    ("analyze", "matplotlib", "analyze (figures)", "pip install 'biamat-engine[analyze]'"),
    ("tensorboard", "tensorboard", "runtime.tensorboard = true", "pip install 'biamat-engine[tensorboard]'"),
    ("study", "submitit", "study --jobs N, --executor slurm", "pip install 'biamat-engine[study]'"),
    ("numba", "numba", "numba kernels on CPU", "pip install numba"),
]


def probe(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # a broken install is as unusable as a missing one
        return False, f"{type(err).__name__}: {err}".splitlines()[0][:90]
    try:
        # The distribution's own version: some packages (ffcv 1.0.2) report a stale __version__.
        top = module.split(".")[0]
        dist = importlib.metadata.packages_distributions().get(top, [top])[0]
        return True, importlib.metadata.version(dist)
    except (importlib.metadata.PackageNotFoundError, IndexError):
        return True, str(getattr(mod, "__version__", "installed"))


def info_command() -> None:
    """Print versions, devices, which optional extras work here, and the presets."""
    import torch

    from engine.config import preset_names
    from engine.runtime import resolve_runtime
    from engine.config import RuntimeConfig

    console.print(f"python {platform.python_version()}  torch {torch.__version__}  ({platform.machine()})")
    devices = Table(title="devices", show_edge=False)
    for col in ("device", "name", "memory", "precision (auto)"):
        devices.add_column(col)
    devices.add_row("cpu", platform.processor() or platform.machine(), "-", "fp32")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        runtime, _ = resolve_runtime(RuntimeConfig(device=f"cuda:{i}"))
        devices.add_row(f"cuda:{i}", props.name, f"{props.total_memory / 2**30:.1f} GiB", runtime.precision)
    console.print(devices)

    extras = Table(title="optional extras", show_edge=False)
    for col in ("extra", "status", "enables", "install"):
        extras.add_column(col)
    for name, module, enables, hint in EXTRAS:
        ok, detail = probe(module)
        extras.add_row(name, f"[green]{escape(detail)}[/]" if ok else f"[red]missing[/] ({escape(detail)})",
                       enables, "" if ok else escape(hint))
    console.print(extras)
    console.print("presets: " + ", ".join(preset_names()))
