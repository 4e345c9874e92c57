"""`biamat-engine bench kernels`: each kernel implementation against the plain-torch reference."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.bench_common import ENGINE, TIMING, ReportPath, print_report
from cli.options import devices, require_device
from kernels.errors import InputError

EPILOG = (
    "Example: biamat-engine bench kernels --device cpu --threads 1 --repeats 20 --out runs/bench/kernels.json\n\n"
    "Force the reference in every other command with BIAMAT_KERNELS=torch."
)


def render_table(report: dict) -> Table:
    table = Table(title=f"kernels  |  {report['device']}  |  torch {report['torch']}  |  rev {report['git_revision']}")
    for column, justify in (("kernel", "left"), ("shape", "left"), ("impl", "left"), ("mean us", "right"),
                            ("std us", "right"), ("vs torch", "right")):
        table.add_column(column, justify=justify)
    for r in report["rows"]:
        if r.get("error"):
            table.add_row(r["kernel"], r["shape"], r["impl"], "-", "-", "[bold red]wrong[/]")
            continue
        table.add_row(r["kernel"], r["shape"], r["impl"], f"{r['mean_us']:.1f}", f"{r['std_us']:.1f}",
                      f"{r['speedup']:.2f}x")
    return table


def bench_kernels(
    device: Annotated[str, typer.Option(callback=devices("cpu", "cuda"), rich_help_panel=ENGINE,
                                        help="cpu (numba vs torch) or cuda (triton vs torch).")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads for torch and numba (default: torch's).", rich_help_panel=ENGINE)] = None,
    compile_reference: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="Also time the torch.compile'd reference.", rich_help_panel=ENGINE)] = True,
    repeats: Annotated[int, typer.Option(
        min=2, help="Timed repeats per row (after warm-up).", rich_help_panel=TIMING)] = 20,
    out: ReportPath = None,
) -> None:
    """Each kernel implementation against the plain-torch reference.

    Times confidence masking, routed loss (forward, forward+backward), the PGD step and crop+flip
    at the BiaMAT workload's sizes, every implementation side by side with the torch reference.
    Each implementation is first checked against the reference on the same inputs: one that
    disagrees is not timed, its row says why, and the command exits 1."""
    from benchmarks.kernels import run

    require_device(device)
    report = run(device=device, repeats=repeats, compile_reference=compile_reference, threads=threads, out=out)
    print_report(render_table(report), report["notes"], out)
    if report["failed"]:
        # After the table and the report: the rows that did run are kept, the wrong ones named.
        raise InputError(f"{len(report['failed'])} kernel row(s) disagree with the torch reference and were not "
                        f"timed: {report['failed'][0]}; force the reference with BIAMAT_KERNELS=torch until "
                        "the kernel is fixed")
