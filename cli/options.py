"""Option values several commands share: their checks (a bad value is a usage error, exit 2) and
the CUDA check (a valid `--device cuda` on a machine without one is a user error, exit 1)."""

from __future__ import annotations

import re
from typing import Annotated, Callable, Optional

import typer

from kernels.errors import InputError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def fraction(text: str) -> float:
    """`8/255`, `0.031` -> a float in [0, 1]: the form papers write eps and step sizes in (a
    Typer `parser`; click adds the option's name to its BadParameter). Read by the config's own
    `parse_number`, so a flag and a config file read 8/255 alike."""
    from engine.config import parse_number  # standard library only: --help stays light

    try:
        value = parse_number(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{text} is outside [0, 1], the range of the images")
    return value


def devices(*allowed: str) -> Callable[[Optional[str]], Optional[str]]:
    """A Typer callback accepting `allowed` (`auto`, `cpu`, `cuda`, and `cuda:N` when `cuda:N` is
    among them), or None when the option was not given."""
    def check(value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        match = _DEVICE.fullmatch(value)
        kind = "cuda:N" if match and match.group(1) else value
        if not match or kind not in allowed:
            raise typer.BadParameter(f"{value!r}: expected {' | '.join(allowed)}")
        return value
    return check


def require_device(device: str) -> None:
    """Stops before any work when `device` names CUDA and torch has none (`auto` always runs)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: torch sees no CUDA device on this machine "
                        f"(torch {torch.__version__}); use --device cpu")


RunDevice = Annotated[str, typer.Option(
    callback=devices("auto", "cpu", "cuda", "cuda:N"), rich_help_panel="Run",
    help="auto (cuda when there is one), cpu, cuda or cuda:N.")]
"""`--device` of the commands that run a trained model over data (eval, pseudo-label, robustify)."""

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.", rich_help_panel="Run")]
"""`--overwrite` of the commands that write one output file."""
