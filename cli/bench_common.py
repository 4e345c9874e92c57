"""What the `bench` commands share: the device check, error reporting and printing the report."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}")


@contextlib.contextmanager
def bench_errors(*errors: type[BaseException]) -> Iterator[None]:
    """Turns `errors` (what a user fixes from the message: no CUDA, a bad choice) into a red
    message on stderr and exit code 1, without a traceback."""
    try:
        yield
    except errors as err:
        Console(stderr=True).print(f"[red]{err}[/red]")
        raise typer.Exit(1) from err


def print_report(table: Table, notes: list[str], out: Optional[Path]) -> None:
    """The table, then the report's notes, then where the JSON went."""
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")
    if out is not None:
        console.print(f"wrote {out}")
