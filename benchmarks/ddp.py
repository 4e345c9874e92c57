"""Data-parallel scaling: images/s of the engine's training step on 1, 2, ... processes.

Every row is a fresh group of W processes started with torch.multiprocessing on this machine, as
`torchrun --nproc-per-node W` would start them (gloo on CPUs, NCCL on GPUs with one GPU per
process); W = 1 is the plain one-process step, without DistributedDataParallel. Each process
steps `engine.step.TrainStep`, the object the trainer trains with, with the trunk compiled by the
trainer's `compile_trunk`, on its own fixed batch of `batch` primary + `aux_batch` auxiliary
images (per rank, as training under torchrun does: W ranks train on W times the images per step).

Timing is honest in airbench's sense: `repeats` rounds in which every row takes its turn, so load
changes on a shared machine hit all rows alike; in each round a row's process group is started
afresh, runs `warmup` untimed steps (torch.compile, numba, the BiaMAT step that fixes omega, DDP's
first step that builds its buckets), then times `steps` steps from a barrier until the device is
synchronised and every rank has finished (a second barrier): a round lasts as long as its slowest
rank. Images/s count every rank's images; scaling efficiency is images/s at W over W times
images/s at 1 process, taken per round (paired) and then averaged.

With `control`, every W > 1 is also timed as W independent processes without DDP (each its own
one-process step, the group used for the barriers only): on a machine that other work shares,
efficiency of the DDP row over the control row separates what DDP's communication costs from
what the machine's contention costs.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import environment, mean_std, set_cpu_threads, sync, write_report
from benchmarks.step import METHOD_DEFAULTS, make_batch
from kernels.errors import InputError

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, settings: dict, ddp: bool, out: str) -> None:
    """One rank: join the group, build the step as the trainer does (without DDP when `ddp` is
    False: the control), time it, write its seconds."""
    import torch.distributed as dist

    from engine.config import AttackConfig, MethodConfig, RuntimeConfig
    from engine.distributed import World, data_parallel
    from engine.methods import METHODS, MethodState, StepContext
    from engine.models import build
    from engine.runtime import resolve_runtime
    from engine.step import TrainStep, compile_trunk

    s = settings
    if s["threads"] is not None:
        set_cpu_threads(s["threads"])
    device = s["device"]
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        rt, resolved = resolve_runtime(RuntimeConfig(device=f"cuda:{rank}" if device == "cuda" else "cpu",
                                                     precision=s["precision"], compile=s["compile"],
                                                     kernels=s["kernels"]))
        torch.manual_seed(s["seed"])  # one initial model; DDP's constructor broadcasts rank 0's anyway
        model = build(s["model"], 10, (s["aux_classes"],)).to(rt.device)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        trunk = compile_trunk(model, rt)
        world = World.current()
        step_world = world if ddp else World()
        method_kw, attack_kw = METHOD_DEFAULTS[s["method"]]
        mcfg = MethodConfig(name=s["method"], aux_mode=s["aux_mode"], **method_kw)
        acfg = AttackConfig(steps=s["attack_steps"], **attack_kw)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        step = TrainStep(model, METHODS[s["method"]], optimizer, rt.grad_scaler(), MethodState(),
                         data_parallel(model, trunk, rt.device) if step_world.size > 1 else None, step_world)
        ctx = StepContext(method=mcfg, attack=acfg, in_warmup=False, trunk=trunk, autocast=rt.autocast(),
                          kernel_impl=rt.kernels)
        batch = make_batch(s["batch"], s["aux_batch"], s["size"], s["aux_classes"], rt.device, rt.channels_last,
                           s["seed"] + rank)  # every rank its own images
        for _ in range(s["warmup"]):
            step(batch, ctx)
        sync(rt.device)
        world.barrier()
        start = time.perf_counter()
        for _ in range(s["steps"]):
            step(batch, ctx)
        sync(rt.device)
        world.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            torch.save({"seconds": seconds, "settings": {"precision": rt.precision, "compile": resolved.compile,
                                                         "kernels": rt.kernels, "channels_last": rt.channels_last},
                        "omega": step.state.omega, "threads": torch.get_num_threads()}, f"{out}/rank0.pt")
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _time_world(world_size: int, settings: dict, ddp: bool) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as out:
        mp.spawn(_worker, args=(world_size, _free_port(), settings, ddp, out), nprocs=world_size, join=True)
        return torch.load(Path(out) / "rank0.pt", weights_only=True)


def run(world_sizes: tuple[int, ...] = (1, 2), method: str = "at", model_name: str = "wrn-10-2", batch: int = 64,
        aux_batch: int = 64, aux_classes: int = 1000, size: int = 32, steps: int = 2, warmup: int = 2,
        repeats: int = 3, attack_steps: int = 10, aux_mode: str = "biamat", device: str = "cpu",
        compile: str = "auto", precision: str = "auto", kernels: str = "auto", threads: int | None = 1,
        control: bool = False, seed: int = 0, out: str | Path | None = None) -> dict:
    """Times the training step on each world size, the rows taking turns in every round; returns
    (and optionally writes) the JSON report. On a CPU, `threads` is per process: 1 thread per
    process and as many processes as cores is the fair comparison."""
    if method not in METHOD_DEFAULTS:
        raise InputError(f"--method must be at or trades, got {method!r}")
    if not world_sizes or min(world_sizes) < 1:
        raise InputError(f"--world-sizes must list positive process counts, got {','.join(map(str, world_sizes))}")
    if warmup < 1:
        raise InputError("--warmup must be at least 1: the first BiaMAT step fixes omega and DDP builds its buckets")
    if device == "cuda":
        available = torch.cuda.device_count()
        if available < max(world_sizes):
            raise InputError(f"--world-sizes {max(world_sizes)} needs as many GPUs, this machine has {available}; "
                             "for several machines train under torchrun (docs/multi-gpu.md)")
    elif device != "cpu":
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    settings = dict(method=method, model=model_name, batch=batch, aux_batch=aux_batch, aux_classes=aux_classes,
                    size=size, steps=steps, warmup=warmup, repeats=repeats, attack_steps=attack_steps,
                    aux_mode=aux_mode, device=device, compile=compile, precision=precision, kernels=kernels,
                    threads=threads, seed=seed)
    load_before = os.getloadavg()
    runs = [(w, w > 1) for w in world_sizes] + [(w, False) for w in world_sizes if control and w > 1]
    results: dict[tuple[int, bool], list[dict]] = {run: [] for run in runs}
    for r in range(repeats):
        for w, ddp in runs:
            log.info("round %d/%d: %d process(es)%s", r + 1, repeats, w, "" if ddp or w == 1 else " without DDP")
            results[(w, ddp)].append(_time_world(w, settings, ddp))
    rates = {run: [steps * run[0] * (batch + aux_batch) / t["seconds"] for t in timed] for run, timed in results.items()}
    rows = []
    for (w, ddp), timed in results.items():
        mean, std = mean_std(rates[(w, ddp)])
        base, twin = rates.get((1, False)), rates.get((w, False)) if ddp else None
        rows.append({"world_size": w, "ddp": ddp, "images_per_s": mean, "images_per_s_std": std,
                     "images_per_s_per_rank": mean / w,
                     "step_seconds": sum(t["seconds"] for t in timed) / (repeats * steps),
                     "efficiency": _paired_mean(rates[(w, ddp)], base, w),
                     "vs_control": _paired_mean(rates[(w, ddp)], twin, 1),
                     "threads_per_process": timed[0]["threads"], "omega": timed[0]["omega"], **timed[0]["settings"]})
    base = rates.get((1, False))
    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    report = {
        "benchmark": "ddp",
        **environment(dev),
        "backend": "nccl" if device == "cuda" else "gloo",
        "config": {**settings, "world_sizes": list(world_sizes), "cpu_count": os.cpu_count(),
                   "data": "random images in [0, 1], random labels, one fixed batch per rank",
                   "images_per_step": "per rank: batch + aux_batch"},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "notes": [] if base else ["no 1-process row: scaling efficiency left out"],
        "rows": rows,
    }
    write_report(report, out)
    return report


def _paired_mean(rates: list[float], reference: list[float] | None, scale: int) -> float | None:
    """Mean over rounds of rate / (scale x the reference's rate in the same round)."""
    if reference is None:
        return None
    return mean_std([a / (scale * b) for a, b in zip(rates, reference)])[0]


def format_table(report: dict) -> str:
    """A markdown table of the report (also what docs/benchmarks.md shows)."""
    lines = ["| processes | DDP | images/s | std | images/s per process | step (s) | efficiency | vs control |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        eff = f"{100 * r['efficiency']:.0f}%" if r["efficiency"] is not None else "-"
        ctl = f"{100 * r['vs_control']:.0f}%" if r["vs_control"] is not None else "-"
        lines.append(f"| {r['world_size']} | {ddp_label(r)} | {r['images_per_s']:.1f} | {r['images_per_s_std']:.1f} "
                     f"| {r['images_per_s_per_rank']:.1f} | {r['step_seconds']:.3f} | {eff} | {ctl} |")
    return "\n".join(lines)


def ddp_label(row: dict) -> str:
    """How a row's processes trained: through DDP, independently (the control), or alone."""
    return "yes" if row["ddp"] else ("-" if row["world_size"] == 1 else "no (control)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(format_table(run()))
