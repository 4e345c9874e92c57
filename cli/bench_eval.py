"""`biamat-engine bench eval`: images/s of the clean pass per backend and of each attack."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from cli.bench_common import ENGINE, TIMING, WORKLOAD, print_report, ReportPath
from cli.options import devices, require_device

EPILOG = "Example: biamat-engine bench eval --model wrn-16-4 --n 256 --device cuda --out bench-eval.json"


def bench_eval(
    model: Annotated[str, typer.Option(
        help="Architecture, randomly initialised (wrn-D-K).", rich_help_panel=WORKLOAD)] = "wrn-16-4",
    n: Annotated[int, typer.Option(min=1, help="Images per timed run.", rich_help_panel=WORKLOAD)] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.", rich_help_panel=WORKLOAD)] = 256,
    steps: Annotated[int, typer.Option(min=1, help="Iterations of PGD, CW and APGD-CE.", rich_help_panel=WORKLOAD)] = 10,
    device: Annotated[str, typer.Option(
        callback=devices("cpu", "cuda"), help="cpu or cuda.", rich_help_panel=ENGINE)] = "cpu",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per row (after warm-up).", rich_help_panel=TIMING)] = 3,
    out: ReportPath = None,
) -> None:
    """Images/s of the clean pass per backend and of each attack.

    Times the clean pass under each available backend (eager, compile, tensorrt) and each attack
    (PGD, CW, APGD-CE) on the same images, and prints a table."""
    from benchmarks.eval import format_table, run

    require_device(device)
    report = run(model_name=model, n=n, batch_size=batch_size, steps=steps, device=device, repeats=repeats, out=out)
    print_report(Text(format_table(report)), [], out)
