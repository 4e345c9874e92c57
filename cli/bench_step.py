"""`biamat-engine bench step`: the engine's training step against the plain reference and naive steps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.app import bench_app
from cli.bench_common import bench_errors, print_report

_EPILOG = (
    "Example (CPU, about 7 minutes on 2 cores): biamat-engine bench step --method both --model wrn-10-2 --batch 64 "
    "--aux-batch 64 --steps 1 --repeats 3 --device cpu --compile off,on --kernels auto,torch --threads 1 "
    "--out runs/bench/step-cpu.json\n\n"
    "Example (GPU): biamat-engine bench step --method both --model wrn-28-10 --batch 128 --aux-batch 128 "
    "--device cuda --out runs/bench/step-cuda.json"
)


def render_table(report: dict) -> Table:
    cfg = report["config"]
    table = Table(title=(f"step  |  {cfg['model']} {cfg['batch']}+{cfg['aux_batch']} @ {cfg['size']}px, "
                         f"PGD-{cfg['attack_steps']}, aux {cfg['aux_mode']}  |  {report['device']}  |  "
                         f"torch {report['torch']}  |  rev {report['git_revision']}"))
    for column, justify in (("method", "left"), ("step", "left"), ("images/s", "right"), ("std", "right"),
                            ("vs reference", "right"), ("vs naive", "right"), ("MFU", "right")):
        table.add_column(column, justify=justify)
    for r in report["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        table.add_row(r["method"], r["label"], f"{r['images_per_s']:.1f}", f"{r['images_per_s_std']:.1f}",
                      f"{r['vs_reference']:.2f}x", f"{r['vs_naive']:.2f}x", mfu)
    return table


@bench_app.command("step", epilog=_EPILOG)
def bench_step(
    method: str = typer.Option("at", help="at, trades or both."),
    model: str = typer.Option("wrn-10-2", help="Architecture, wrn-DEPTH-WIDTH (the paper: wrn-28-10 / wrn-34-10)."),
    batch: int = typer.Option(64, min=1, help="Primary images per step."),
    aux_batch: int = typer.Option(64, min=1, help="Auxiliary images per step."),
    aux_classes: int = typer.Option(1000, min=1, help="Classes of the auxiliary head (ImageNet: 1000)."),
    size: int = typer.Option(32, min=8, help="Image side in pixels."),
    steps: int = typer.Option(2, min=1, help="Training steps per timed repeat."),
    warmup: int = typer.Option(2, min=1, help="Untimed steps per row first (compile, numba, omega)."),
    repeats: int = typer.Option(3, min=1, help="Timed rounds; rows take turns within each round."),
    attack_steps: int = typer.Option(10, min=0, help="PGD steps of the training attack."),
    aux_mode: str = typer.Option("biamat", help="biamat, labels, uniform or none."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    compile: str = typer.Option("auto", help="Engine torch.compile: auto, on, off, or a list such as off,on."),
    precision: str = typer.Option("auto", help="Engine precision: auto, fp32, bf16 or fp16."),
    kernels: str = typer.Option("auto", help="Engine kernels: auto, torch, numba, triton, or a list such as auto,torch."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch and numba (default: torch's)."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
) -> None:
    """Times the engine's training step (as the trainer runs it) side by side with a plain
    reference step (eager fp32 NCHW, input-only attack gradients, TRADES clean logits recomputed
    every attack step) and a naive one (loss.backward() in the attack), on the same weights and
    batch: images/s, the ratios, and MFU on a GPU."""
    from benchmarks.step import run
    from engine.config import ConfigError

    if method not in ("at", "trades", "both"):
        raise typer.BadParameter(f"--method must be at, trades or both, got {method!r}")
    if aux_mode not in ("biamat", "labels", "uniform", "none"):
        raise typer.BadParameter(f"--aux-mode must be biamat, labels, uniform or none, got {aux_mode!r}")
    with bench_errors(ConfigError, ValueError, RuntimeError, ModuleNotFoundError):
        report = run(method=method, model_name=model, batch=batch, aux_batch=aux_batch, aux_classes=aux_classes,
                     size=size, steps=steps, warmup=warmup, repeats=repeats, attack_steps=attack_steps,
                     aux_mode=aux_mode, device=device, compile=compile, precision=precision, kernels=kernels,
                     threads=threads, out=out)
    print_report(render_table(report), report["notes"], out)
