"""`biamat-engine bench loader`: FFCV, resident (and DALI) against a plain torch DataLoader."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.bench_common import ENGINE, TIMING, WORKLOAD, print_report, ReportPath
from cli.options import devices, require_device

EPILOG = "Example: biamat-engine bench loader --n 10000 --size 32 --device cpu --out runs/bench/loader.json"


def render_table(report: dict) -> Table:
    cfg = report["config"]
    table = Table(title=f"loader  |  {report['device']}  |  {cfg['n']} x {cfg['size']}px, batches {cfg['batch']}, "
                        f"{cfg['workers']} workers  |  rev {report['git_revision']}")
    for column, justify in (("backend", "left"), ("images/s", "right"), ("std", "right"), ("vs dataloader", "right")):
        table.add_column(column, justify=justify)
    for r in report["rows"]:
        ratio = f"{r['vs_dataloader']:.2f}x" if r["vs_dataloader"] else "-"
        table.add_row(r["backend"], f"{r['images_per_s_mean']:,.0f}", f"{r['images_per_s_std']:,.0f}", ratio)
    return table


def bench_loader(
    n: Annotated[int, typer.Option(
        min=256, help="Images per dataset (primary and auxiliary each).", rich_help_panel=WORKLOAD)] = 10_000,
    size: Annotated[int, typer.Option(min=8, max=4096, help="Image side in pixels.", rich_help_panel=WORKLOAD)] = 32,
    backends: Annotated[str, typer.Option(
        help="Comma-separated rows to run.", rich_help_panel=WORKLOAD)] = "ffcv,resident,dataloader,dali",
    device: Annotated[str, typer.Option(callback=devices("cpu", "cuda"), rich_help_panel=ENGINE,
                                        help="cpu or cuda: where the batches are delivered.")] = "cpu",
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Loader threads/processes (default: all cores).", rich_help_panel=ENGINE)] = None,
    repeats: Annotated[int, typer.Option(
        min=2, help="Timed epochs per backend (after a warm-up epoch).", rich_help_panel=TIMING)] = 3,
    out: ReportPath = None,
) -> None:
    """FFCV, resident (and DALI) loaders against a plain torch DataLoader.

    Images/s delivered to the device for interleaved 128 + 128 primary/auxiliary training
    batches (crop + flip), each backend on the same data."""
    from benchmarks.loader import BACKENDS, run

    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise typer.BadParameter(f"unknown backends {unknown}; choose from {sorted(BACKENDS)}",
                                 param_hint="--backends")
    require_device(device)
    report = run(n=n, size=size, device=device, repeats=repeats, workers=workers, backends=names, out=out)
    print_report(render_table(report), report["notes"], out)
