"""`biamat-engine bench loader`: FFCV, resident (and DALI) against a plain torch DataLoader."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.app import bench_app
from cli.bench_common import check_device, print_report

_EPILOG = "Example: biamat-engine bench loader --n 10000 --size 32 --device cpu --out runs/bench/loader.json"


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


@bench_app.command("loader", epilog=_EPILOG)
def bench_loader(
    n: int = typer.Option(10_000, min=256, help="Images per dataset (primary and auxiliary each)."),
    size: int = typer.Option(32, help="Image side in pixels."),
    device: str = typer.Option("cpu", help="cpu or cuda: where the batches are delivered."),
    repeats: int = typer.Option(3, min=2, help="Timed epochs per backend (after a warm-up epoch)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Loader threads/processes (default: all cores)."),
    backends: str = typer.Option("ffcv,resident,dataloader,dali", help="Comma-separated rows to run."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
) -> None:
    """Images/s delivered to the device for interleaved 128 + 128 primary/auxiliary training
    batches (crop + flip), each backend on the same data."""
    from benchmarks.loader import BACKENDS, run

    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise typer.BadParameter(f"unknown backends {unknown}; choose from {sorted(BACKENDS)}")
    check_device(device)
    report = run(n=n, size=size, device=device, repeats=repeats, workers=workers, backends=names, out=out)
    print_report(render_table(report), report["notes"], out)
