"""`biamat-engine export`: the primary classifier in a format other tools load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.console import console

EPILOG = "Example: biamat-engine export runs/demo --format robustbench --out runs/demo/robustbench"


def export_command(
    run: Annotated[Path, typer.Argument(help="RUN_DIR (or a model.safetensors / checkpoint inside one).")],
    format: Annotated[str, typer.Option("--format", help="Export format: robustbench.")] = "robustbench",
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: RUN_DIR/robustbench).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in the output directory.")] = False,
) -> None:
    """Export the primary classifier in a format other tools load.

    Weights under RobustBench's WideResNet key names, a model card (model.json) and a README
    with the loading code."""
    from engine.export import EXPORT_FORMATS, export_robustbench

    if format not in EXPORT_FORMATS:
        raise typer.BadParameter(f"unknown export format {format!r}: expected {', '.join(EXPORT_FORMATS)}",
                                 param_hint="--format")
    result = export_robustbench(run, out, overwrite=overwrite)
    console.print(f"wrote {result.weights}, {result.card.name} and {result.readme.name} in {result.out_dir}")
