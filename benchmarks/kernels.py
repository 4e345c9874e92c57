"""Kernel benchmark: each implementation against the plain-torch reference at the workload's sizes.

Sizes are those of one BiaMAT step with 256-sample batches: primary logits 256 x 10 (CIFAR-10)
and 256 x 100 (CIFAR-100), auxiliary logits 256 x 1000 (ImageNet), images 256 x 3 x 32 x 32 and
256 x 3 x 64 x 64. Every row is timed side by side in one process on the same inputs: warm-up
calls first (numba compilation, torch.compile, Triton autotuning), then `repeats` timings of a
loop long enough to dwarf the timer, each synchronised with the device.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import environment, mean_std, set_cpu_threads, time_calls, write_report
from kernels import augment, dispatch, pgd, route

log = logging.getLogger(__name__)

BATCH = 256
PRIMARY_CLASSES = (10, 100)
AUX_CLASSES = 1000
IMAGE_SIZES = (32, 64)
OMEGA = 0.5
EPS, STEP = 8 / 255, 2 / 255
PAD = 4
MIN_LOOP_SECONDS = 0.02  # each timing covers at least this long, so timer noise stays small


@dataclass
class Row:
    kernel: str
    shape: str
    impl: str  # torch | torch.compile | numba | triton
    mean_us: float
    std_us: float
    speedup: float  # reference time / this time (the eager torch reference is 1.0)


def _time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Mean and standard deviation of one call, in microseconds."""
    first = time_calls(fn, device, repeats=1, warmup=warmup)[0]  # after warm-up: sizes the loop
    loops = max(1, int(MIN_LOOP_SECONDS / max(first, 1e-9)))
    return mean_std([s * 1e6 for s in time_calls(fn, device, repeats, loops=loops)])


@dataclass
class Case:
    kernel: str
    shape: str
    reference: Callable  # the plain-torch twin
    fast: Callable  # the dispatching entry point, takes impl=
    args: tuple
    backward: bool = False  # time forward + backward w.r.t. args[0] and args[1]


def _bind(fn: Callable, case: Case) -> Callable[[], object]:
    if not case.backward:
        return lambda: fn(*case.args)
    inputs = list(case.args[:2])
    return lambda: torch.autograd.grad(fn(*case.args).sum(), inputs)


def _cases(device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    for c in PRIMARY_CLASSES:
        pri = (torch.randn(BATCH, c, generator=g) * 3).to(device)
        aux = (torch.randn(BATCH, AUX_CLASSES, generator=g) * 3).to(device)
        y = torch.randint(0, AUX_CLASSES, (BATCH,), generator=g).to(device)
        high = (torch.rand(BATCH, generator=g) > 0.5).to(device)  # about half the rows each way
        yield Case("confidence_mask", f"{BATCH}x{c}", route.confidence_mask_torch, route.confidence_mask,
                   (pri, OMEGA))
        shape = f"{BATCH}x{c} + {BATCH}x{AUX_CLASSES}"
        yield Case("routed_loss fwd", shape, route.routed_loss_torch, route.routed_loss, (pri, aux, y, high))
        pri_g, aux_g = pri.clone().requires_grad_(), aux.clone().requires_grad_()
        yield Case("routed_loss fwd+bwd", shape, route.routed_loss_torch, route.routed_loss,
                   (pri_g, aux_g, y, high), backward=True)
    for size in IMAGE_SIZES:
        cl = torch.channels_last
        x_nat = torch.rand(BATCH, 3, size, size, generator=g).to(device).contiguous(memory_format=cl)
        x_adv = (x_nat + (torch.rand(x_nat.shape, generator=g).to(device) * 2 - 1) * EPS).clamp(0, 1)
        x_adv = x_adv.contiguous(memory_format=cl)
        grad = torch.randn(x_nat.shape, generator=g).to(device).contiguous(memory_format=cl)
        shape = f"{BATCH}x3x{size}x{size}"
        yield Case("pgd_step", shape, pgd.pgd_step_torch, pgd.pgd_step, (x_adv, grad, x_nat, STEP, EPS))
        images = torch.randint(0, 256, (BATCH, size, size, 3), dtype=torch.uint8, generator=g).to(device)
        offsets = torch.randint(0, 2 * PAD + 1, (BATCH, 2), generator=g).to(device)
        flips = (torch.rand(BATCH, generator=g) > 0.5).to(device)
        yield Case("crop_flip", shape, augment.crop_flip_torch, augment.crop_flip, (images, offsets, flips, PAD))


def _fast_impls(device: torch.device) -> list[str]:
    fast = "triton" if device.type == "cuda" else "numba"
    return [fast] if dispatch.available(fast) else []


def run(device: str = "cpu", repeats: int = 20, compile_reference: bool = True, threads: int | None = None,
        out: Path | None = None) -> dict:
    """Time every kernel at the workload's sizes; returns (and optionally writes) the JSON report.
    threads: CPU threads for torch and numba (default: torch's current setting)."""
    dev = torch.device(device)
    if threads is not None:
        set_cpu_threads(threads)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    notes = []
    if dev.type == "cpu":
        notes.append("triton skipped on CPU: its interpreter runs kernels in Python, so its timings mean nothing")
    impls = _fast_impls(dev)
    rows: list[Row] = []
    for case in _cases(dev):
        ref_mean, ref_std = _time(_bind(case.reference, case), dev, repeats)
        rows.append(Row(case.kernel, case.shape, "torch", ref_mean, ref_std, 1.0))
        if compile_reference:
            try:
                mean, std = _time(_bind(torch.compile(case.reference, dynamic=False), case), dev, repeats)
                rows.append(Row(case.kernel, case.shape, "torch.compile", mean, std, ref_mean / mean))
            except Exception as err:  # e.g. no C++ compiler for inductor on this machine
                notes.append(f"torch.compile of the references failed ({type(err).__name__}: {err}); rows left out")
                compile_reference = False
        for impl in impls:
            mean, std = _time(_bind(functools.partial(case.fast, impl=impl), case), dev, repeats)
            rows.append(Row(case.kernel, case.shape, impl, mean, std, ref_mean / mean))
        log.info("%s %s done", case.kernel, case.shape)
    report = {
        "benchmark": "kernels",
        **environment(dev),
        "config": {"device": dev.type, "repeats": repeats, "cpu_threads": torch.get_num_threads(), "batch": BATCH, "primary_classes": PRIMARY_CLASSES,
                   "aux_classes": AUX_CLASSES, "image_sizes": IMAGE_SIZES, "pad": PAD,
                   "compile_reference": compile_reference, "impls": ["torch"] + impls},
        "notes": notes,
        "rows": [asdict(r) for r in rows],
    }
    write_report(report, out)
    return report


def format_table(report: dict) -> str:
    """A markdown table of the report (also what docs/benchmarks.md shows)."""
    lines = ["| kernel | shape | impl | mean (us) | std (us) | speed-up vs torch |", "|---|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['impl']} | {r['mean_us']:.1f} | {r['std_us']:.1f} "
                     f"| {r['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(format_table(run()))
