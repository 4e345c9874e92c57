"""`biamat-engine bench kernels`: each kernel implementation against the plain-torch reference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.app import bench_app
from cli.bench_common import bench_errors, check_device, print_report

_EPILOG = (
    "Example: biamat-engine bench kernels --device cpu --threads 1 --repeats 20 --out runs/bench/kernels.json\n\n"
    "Force the reference in every other command with BIAMAT_KERNELS=torch."
)


def render_table(report: dict) -> Table:
    table = Table(title=f"kernels  |  {report['device']}  |  torch {report['torch']}  |  rev {report['git_revision']}")
    for column, justify in (("kernel", "left"), ("shape", "left"), ("impl", "left"), ("mean us", "right"),
                            ("std us", "right"), ("vs torch", "right")):
        table.add_column(column, justify=justify)
    for r in report["rows"]:
        table.add_row(r["kernel"], r["shape"], r["impl"], f"{r['mean_us']:.1f}", f"{r['std_us']:.1f}",
                      f"{r['speedup']:.2f}x")
    return table


@bench_app.command("kernels", epilog=_EPILOG)
def bench_kernels(
    device: str = typer.Option("cpu", help="cpu (numba vs torch) or cuda (triton vs torch)."),
    repeats: int = typer.Option(20, min=2, help="Timed repeats per row (after warm-up)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch and numba (default: torch's)."),
    compile_reference: bool = typer.Option(True, "--compile/--no-compile",
                                           help="Also time the torch.compile'd reference."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
) -> None:
    """Times confidence masking, routed loss (forward, forward+backward), the PGD step and crop+flip
    at the BiaMAT workload's sizes, every implementation side by side with the torch reference."""
    from benchmarks.kernels import run

    check_device(device)
    with bench_errors(RuntimeError):
        report = run(device=device, repeats=repeats, compile_reference=compile_reference, threads=threads, out=out)
    print_report(render_table(report), report["notes"], out)
