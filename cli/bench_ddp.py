"""`biamat-engine bench ddp`: images/s of the training step on 1, 2, ... DistributedDataParallel processes.

This module does not import `cli.app`: `cli/app.py` registers `bench_ddp` under `bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.bench_common import bench_errors, check_device, print_report

EPILOG = (
    "Example (CPU, 1 vs 2 gloo processes of 1 thread each): biamat-engine bench ddp --world-sizes 1,2 "
    "--device cpu --threads 1 --model wrn-10-1 --batch 32 --aux-batch 32 --out runs/bench/ddp-cpu.json\n\n"
    "Example (8 GPUs, NCCL): biamat-engine bench ddp --world-sizes 1,2,4,8 --device cuda --model wrn-28-10 "
    "--batch 128 --aux-batch 128 --out runs/bench/ddp-cuda.json"
)


def render_table(report: dict) -> Table:
    from benchmarks.ddp import ddp_label

    cfg = report["config"]
    table = Table(title=(f"ddp ({report['backend']})  |  {cfg['method']} {cfg['model']} {cfg['batch']}+{cfg['aux_batch']} "
                         f"per process @ {cfg['size']}px, PGD-{cfg['attack_steps']}  |  {report['device']}  |  "
                         f"torch {report['torch']}  |  rev {report['git_revision']}"))
    for column in ("processes", "DDP", "images/s", "std", "per process", "step (s)", "efficiency", "vs control"):
        table.add_column(column, justify="left" if column == "DDP" else "right")
    for r in report["rows"]:
        eff = f"{100 * r['efficiency']:.0f}%" if r["efficiency"] is not None else "-"
        ctl = f"{100 * r['vs_control']:.0f}%" if r["vs_control"] is not None else "-"
        table.add_row(str(r["world_size"]), ddp_label(r), f"{r['images_per_s']:.1f}", f"{r['images_per_s_std']:.1f}",
                      f"{r['images_per_s_per_rank']:.1f}", f"{r['step_seconds']:.3f}", eff, ctl)
    return table


def bench_ddp(
    world_sizes: str = typer.Option("1,2", help="Process counts to time, e.g. 1,2 (CPU) or 1,2,4,8 (GPUs)."),
    method: str = typer.Option("at", help="at or trades."),
    model: str = typer.Option("wrn-10-2", help="Architecture, wrn-DEPTH-WIDTH."),
    batch: int = typer.Option(64, min=1, help="Primary images per step and process."),
    aux_batch: int = typer.Option(64, min=1, help="Auxiliary images per step and process."),
    aux_classes: int = typer.Option(1000, min=1, help="Classes of the auxiliary head."),
    size: int = typer.Option(32, min=8, help="Image side in pixels."),
    steps: int = typer.Option(2, min=1, help="Training steps per timed repeat."),
    warmup: int = typer.Option(2, min=1, help="Untimed steps first (compile, omega, DDP buckets)."),
    repeats: int = typer.Option(3, min=1, help="Timed rounds; in each every row starts a fresh process group."),
    attack_steps: int = typer.Option(10, min=0, help="PGD steps of the training attack."),
    aux_mode: str = typer.Option("biamat", help="biamat, labels, uniform or none."),
    device: str = typer.Option("cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)."),
    compile: str = typer.Option("auto", help="torch.compile of the trunk: auto, on, off."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16."),
    kernels: str = typer.Option("auto", help="auto, torch, numba or triton."),
    threads: Optional[int] = typer.Option(1, min=1, help="CPU threads per process (torch and numba)."),
    control: bool = typer.Option(False, "--control", help="Also time each count as independent processes without DDP."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
) -> None:
    """Images/s of the training step on 1, 2, ... DistributedDataParallel processes.

    Each process count is a fresh process group on this machine; every process steps the trainer's
    TrainStep on its own batch. Prints images/s over all processes and the scaling efficiency
    against one process."""
    from benchmarks.ddp import run
    from engine.config import ConfigError

    check_device(device)
    try:
        sizes = tuple(int(w) for w in world_sizes.split(",") if w.strip())
    except ValueError:
        raise typer.BadParameter(f"--world-sizes must be a comma list of process counts, got {world_sizes!r}")
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"--world-sizes must be a comma list of positive process counts, got {world_sizes!r}")
    with bench_errors(ConfigError, ValueError, RuntimeError, ModuleNotFoundError):
        report = run(world_sizes=sizes, method=method, model_name=model, batch=batch, aux_batch=aux_batch,
                     aux_classes=aux_classes, size=size, steps=steps, warmup=warmup, repeats=repeats,
                     attack_steps=attack_steps, aux_mode=aux_mode, device=device, compile=compile,
                     precision=precision, kernels=kernels, threads=threads, control=control, out=out)
    print_report(render_table(report), report["notes"], out)
