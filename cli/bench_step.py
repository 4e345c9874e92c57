"""`biamat-engine bench step`: the engine's training step against the plain reference and naive steps."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.bench_common import (ENGINE, TIMING, WORKLOAD, AttackSteps, AuxClasses, AuxMode, ImageSize, ReportPath,
                               StepsPerRepeat, print_report)
from cli.options import devices, require_device

EPILOG = (
    "Example (CPU, about 7 minutes on 2 cores): biamat-engine bench step --method both --model wrn-10-2 --batch 64 "
    "--aux-batch 64 --steps 1 --repeats 3 --device cpu --compile off,on --kernels auto,torch --threads 1 "
    "--out runs/bench/step-cpu.json\n\n"
    "Example (GPU): biamat-engine bench step --method both --model wrn-28-10 --batch 128 --aux-batch 128 "
    "--device cuda --out runs/bench/step-cuda.json"
)


def render_table(report: dict) -> Table:
    from benchmarks.step import percent, ratio

    cfg = report["config"]
    table = Table(title=(f"step  |  {cfg['model']} {cfg['batch']}+{cfg['aux_batch']} @ {cfg['size']}px, "
                         f"PGD-{cfg['attack_steps']}, aux {cfg['aux_mode']}  |  {report['device']}  |  "
                         f"torch {report['torch']}  |  rev {report['git_revision']}"))
    for column, justify in (("method", "left"), ("step", "left"), ("images/s", "right"), ("std", "right"),
                            ("vs reference", "right"), ("vs naive", "right"), ("MFU", "right")):
        table.add_column(column, justify=justify)
    measured = report.get("measured_peak_flops")
    if measured:
        table.add_column(f"MFU of {measured / 1e12:.0f} TFLOP/s measured", justify="right")
    table.add_column("first step s", justify="right")
    for r in report["rows"]:
        cells = [r["method"], r["label"], f"{r['images_per_s']:.1f}", f"{r['images_per_s_std']:.1f}",
                 ratio(r["vs_reference"]), ratio(r["vs_naive"]), percent(r["mfu"])]
        if measured:
            cells.append(percent(r["mfu_measured_peak"]))
        table.add_row(*cells, f"{r['first_step_seconds']:.1f}")
    return table


def bench_step(
    method: Annotated[str, typer.Option(help="at, trades or both.", rich_help_panel=WORKLOAD)] = "at",
    model: Annotated[str, typer.Option(help="Architecture, wrn-DEPTH-WIDTH (the paper: wrn-28-10 / wrn-34-10).",
                                       rich_help_panel=WORKLOAD)] = "wrn-10-2",
    batch: Annotated[int, typer.Option(min=1, help="Primary images per step.", rich_help_panel=WORKLOAD)] = 64,
    aux_batch: Annotated[int, typer.Option(min=1, help="Auxiliary images per step.", rich_help_panel=WORKLOAD)] = 64,
    aux_classes: AuxClasses = 1000,
    size: ImageSize = 32,
    attack_steps: AttackSteps = 10,
    aux_mode: AuxMode = "biamat",
    device: Annotated[str, typer.Option(
        callback=devices("auto", "cpu", "cuda"), help="cpu, cuda or auto.", rich_help_panel=ENGINE)] = "auto",
    compile: Annotated[str, typer.Option(
        help="Engine torch.compile: auto, on, off, reduce-overhead (CUDA graphs), max-autotune, or a list such "
             "as off,on,reduce-overhead.", rich_help_panel=ENGINE)] = "auto",
    compile_dynamic: Annotated[str, typer.Option(
        help="Engine torch.compile dynamic shapes (runtime.compile_dynamic): auto (static here: one batch shape, "
             "as training with data.drop_last), true, false, or a list such as auto,true.",
        rich_help_panel=ENGINE)] = "auto",
    cudnn_benchmark: Annotated[str, typer.Option(
        help="Engine cuDNN autotuning (runtime.cudnn_benchmark, CUDA only): off, on, or off,on for both rows.",
        rich_help_panel=ENGINE)] = "off",
    precision: Annotated[str, typer.Option(
        help="Engine precision: auto, fp32, bf16 or fp16.", rich_help_panel=ENGINE)] = "auto",
    kernels: Annotated[str, typer.Option(
        help="Engine kernels: auto, torch, numba, triton, or a list such as auto,torch.",
        rich_help_panel=ENGINE)] = "auto",
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads for torch and numba (default: torch's).", rich_help_panel=ENGINE)] = None,
    steps: StepsPerRepeat = 2,
    warmup: Annotated[int, typer.Option(
        min=1, help="Untimed steps per row first (compile, numba, omega).", rich_help_panel=TIMING)] = 2,
    repeats: Annotated[int, typer.Option(
        min=1, help="Timed rounds; rows take turns within each round.", rich_help_panel=TIMING)] = 3,
    baselines: Annotated[bool, typer.Option(
        "--baselines/--no-baselines", help="Also time the reference and naive steps (paired ratios); a suite that "
                                           "timed them once leaves them out.", rich_help_panel=ENGINE)] = True,
    measured_peak: Annotated[Optional[float], typer.Option(
        min=0.001, help="A bf16 matmul rate measured on this GPU, in TFLOP/s: a second MFU column beside the "
                        "data sheet's.", rich_help_panel=ENGINE)] = None,
    out: ReportPath = None,
) -> None:
    """The engine's training step against the plain reference and naive steps.

    Times the engine's training step (as the trainer runs it) side by side with a plain
    reference step (eager fp32 NCHW, input-only attack gradients, TRADES clean logits recomputed
    every attack step) and a naive one (loss.backward() in the attack), on the same weights and
    batch: images/s, the ratios, and MFU on a GPU. With --out the JSON is rewritten after every
    row's warm-up and every timed round, so a run cut short keeps what it measured."""
    if method not in ("at", "trades", "both"):
        raise typer.BadParameter(f"expected at, trades or both, got {method!r}", param_hint="--method")
    if aux_mode not in ("biamat", "labels", "uniform", "none"):
        raise typer.BadParameter(f"expected biamat, labels, uniform or none, got {aux_mode!r}", param_hint="--aux-mode")
    if not compile_dynamic or set(compile_dynamic.split(",")) - {"auto", "true", "false"}:
        raise typer.BadParameter(f"expected auto, true, false or a list of them, got {compile_dynamic!r}",
                                 param_hint="--compile-dynamic")
    if not cudnn_benchmark or set(cudnn_benchmark.split(",")) - {"off", "on"}:
        raise typer.BadParameter(f"expected off, on or off,on, got {cudnn_benchmark!r}", param_hint="--cudnn-benchmark")
    from benchmarks.step import run

    require_device(device)
    report = run(method=method, model_name=model, batch=batch, aux_batch=aux_batch, aux_classes=aux_classes,
                 size=size, steps=steps, warmup=warmup, repeats=repeats, attack_steps=attack_steps,
                 aux_mode=aux_mode, device=device, compile=compile, precision=precision, kernels=kernels,
                 threads=threads, cudnn_benchmark=cudnn_benchmark, compile_dynamic=compile_dynamic, baselines=baselines,
                 measured_peak=measured_peak * 1e12 if measured_peak else None, out=out)
    print_report(render_table(report), report["notes"], out)
