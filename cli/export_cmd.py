"""`biamat-engine export`: the primary classifier in a format other tools load."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cli.app import app

_EPILOG = "Example: biamat-engine export runs/demo --format robustbench --out runs/demo/robustbench"


@app.command("export", epilog=_EPILOG)
def export_command(
    run: Path = typer.Argument(..., help="RUN_DIR (or a model.safetensors / checkpoint inside one)."),
    format: str = typer.Option("robustbench", "--format", help="Export format: robustbench."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: RUN_DIR/robustbench)."),
) -> None:
    """Exports the primary classifier: weights under RobustBench's WideResNet key names, a model card
    (model.json) and a README with the loading code."""
    from engine.export import EXPORT_FORMATS, export_robustbench

    console = Console(stderr=True)
    if format not in EXPORT_FORMATS:
        console.print(f"[red]error:[/red] unknown export format {format!r}: expected {', '.join(EXPORT_FORMATS)}")
        raise typer.Exit(2)
    try:
        result = export_robustbench(run, out)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    console.print(f"wrote {result.weights}, {result.card.name} and {result.readme.name} in {result.out_dir}")
