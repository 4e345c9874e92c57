"""What the `bench` commands share: the help panels and printing the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import RenderableType

from cli.console import console

# Help panels: what is timed, on what and how, how often, and where the numbers go.
WORKLOAD, ENGINE, TIMING, OUTPUT = "Workload", "Device and engine", "Timing", "Output"

# The training-step workload options `bench step` and `bench ddp` share, declared once.
AuxClasses = Annotated[int, typer.Option(
    min=1, max=1_000_000, help="Classes of the auxiliary head (ImageNet: 1000).", rich_help_panel=WORKLOAD)]
ImageSize = Annotated[int, typer.Option(min=8, max=4096, help="Image side in pixels.", rich_help_panel=WORKLOAD)]
AttackSteps = Annotated[int, typer.Option(min=0, help="PGD steps of the training attack.", rich_help_panel=WORKLOAD)]
AuxMode = Annotated[str, typer.Option(help="biamat, labels, uniform or none.", rich_help_panel=WORKLOAD)]
StepsPerRepeat = Annotated[int, typer.Option(min=1, help="Training steps per timed repeat.", rich_help_panel=TIMING)]


def _claimed(out: Optional[Path]) -> Optional[Path]:
    """Checked before anything is timed: the report may replace only an earlier bench report."""
    if out is not None:
        from engine.outputs import claim_files

        claim_files([out], "bench", overwrite=True)
    return out


ReportPath = Annotated[Optional[Path], typer.Option(
    callback=_claimed, rich_help_panel=OUTPUT,
    help="Write the JSON report here: a new file, or an earlier bench report, which is replaced; never any "
         "other file.")]


def print_report(table: RenderableType, notes: list[str], out: Optional[Path]) -> None:
    """The table, then the report's notes, then where the JSON went (all results: stdout)."""
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")
    if out is not None:
        console.print(f"wrote {out}")
