"""`biamat-engine bench eval`: images/s of the clean pass per backend and of each attack."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import bench_app

_EPILOG = "Example: biamat-engine bench eval --model wrn-16-4 --n 256 --device cuda --out bench-eval.json"


@bench_app.command("eval", epilog=_EPILOG)
def bench_eval_command(
    model: str = typer.Option("wrn-16-4", help="Architecture, randomly initialised (wrn-D-K)."),
    n: int = typer.Option(256, help="Images per timed run."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    steps: int = typer.Option(10, help="Iterations of PGD, CW and APGD-CE."),
    repeats: int = typer.Option(3, help="Timed runs per row (after warm-up)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
) -> None:
    """Times the clean pass under each available backend (eager, compile, tensorrt) and each attack
    (PGD, CW, APGD-CE) on the same images, and prints a table."""
    from benchmarks.eval import format_table, run

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            typer.echo("error: --device cuda was asked for but torch has no CUDA device; use --device cpu", err=True)
            raise typer.Exit(2)
    report = run(model_name=model, n=n, batch_size=batch_size, steps=steps, device=device, repeats=repeats, out=out)
    typer.echo(format_table(report))
    if out is not None:
        typer.echo(f"wrote {out}")
