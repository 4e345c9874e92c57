"""`biamat-engine bench ddp`: images/s of the training step on 1, 2, ... DistributedDataParallel processes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.bench_common import (ENGINE, TIMING, WORKLOAD, AttackSteps, AuxClasses, AuxMode, ImageSize, ReportPath,
                               StepsPerRepeat, print_report)
from cli.options import devices, require_device

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
    world_sizes: Annotated[str, typer.Option(
        help="Process counts to time, e.g. 1,2 (CPU) or 1,2,4,8 (GPUs).", rich_help_panel=WORKLOAD)] = "1,2",
    method: Annotated[str, typer.Option(help="at or trades.", rich_help_panel=WORKLOAD)] = "at",
    model: Annotated[str, typer.Option(help="Architecture, wrn-DEPTH-WIDTH.", rich_help_panel=WORKLOAD)] = "wrn-10-2",
    batch: Annotated[int, typer.Option(
        min=1, help="Primary images per step and process.", rich_help_panel=WORKLOAD)] = 64,
    aux_batch: Annotated[int, typer.Option(
        min=1, help="Auxiliary images per step and process.", rich_help_panel=WORKLOAD)] = 64,
    aux_classes: AuxClasses = 1000,
    size: ImageSize = 32,
    attack_steps: AttackSteps = 10,
    aux_mode: AuxMode = "biamat",
    device: Annotated[str, typer.Option(
        callback=devices("cpu", "cuda"), help="cpu (gloo) or cuda (NCCL, one GPU per process).",
        rich_help_panel=ENGINE)] = "cpu",
    compile: Annotated[str, typer.Option(help="torch.compile of the trunk: auto, on, off.", rich_help_panel=ENGINE)] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.", rich_help_panel=ENGINE)] = "auto",
    kernels: Annotated[str, typer.Option(help="auto, torch, numba or triton.", rich_help_panel=ENGINE)] = "auto",
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads per process (torch and numba).", rich_help_panel=ENGINE)] = 1,
    steps: StepsPerRepeat = 2,
    warmup: Annotated[int, typer.Option(
        min=1, help="Untimed steps first (compile, omega, DDP buckets).", rich_help_panel=TIMING)] = 2,
    repeats: Annotated[int, typer.Option(
        min=1, help="Timed rounds; in each every row starts a fresh process group.", rich_help_panel=TIMING)] = 3,
    control: Annotated[bool, typer.Option(
        "--control", help="Also time each count as independent processes without DDP.", rich_help_panel=TIMING)] = False,
    out: ReportPath = None,
) -> None:
    """Images/s of the training step on 1, 2, ... DistributedDataParallel processes.

    Each process count is a fresh process group on this machine; every process steps the trainer's
    TrainStep on its own batch. Prints images/s over all processes and the scaling efficiency
    against one process."""
    try:
        sizes = tuple(int(w) for w in world_sizes.split(",") if w.strip())
    except ValueError:
        raise typer.BadParameter(f"expected a comma list of process counts, got {world_sizes!r}",
                                 param_hint="--world-sizes") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"expected a comma list of positive process counts, got {world_sizes!r}",
                                 param_hint="--world-sizes")
    from benchmarks.ddp import run

    require_device(device)
    report = run(world_sizes=sizes, method=method, model_name=model, batch=batch, aux_batch=aux_batch,
                 aux_classes=aux_classes, size=size, steps=steps, warmup=warmup, repeats=repeats,
                 attack_steps=attack_steps, aux_mode=aux_mode, device=device, compile=compile,
                 precision=precision, kernels=kernels, threads=threads, control=control, out=out)
    print_report(render_table(report), report["notes"], out)
