"""What the `bench` commands share: the help panels and printing the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import RenderableType

from cli.console import console

# Help panels: what is timed, on what and how, how often, and where the numbers go.
WORKLOAD, ENGINE, TIMING, OUTPUT = "Workload", "Device and engine", "Timing", "Output"


def print_report(table: RenderableType, notes: list[str], out: Optional[Path]) -> None:
    """The table, then the report's notes, then where the JSON went (all results: stdout)."""
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")
    if out is not None:
        console.print(f"wrote {out}")
