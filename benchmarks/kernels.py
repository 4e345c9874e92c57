"""Kernel benchmark: each implementation against the plain-torch reference at the workload's sizes.

Sizes are those of one BiaMAT step with 256-sample batches: primary logits 256 x 10 (CIFAR-10)
and 256 x 100 (CIFAR-100), auxiliary logits 256 x 1000 (ImageNet), images 256 x 3 x 32 x 32 and
256 x 3 x 64 x 64. Every row is timed side by side in one process on the same inputs: warm-up
calls first (numba compilation, torch.compile, Triton autotuning), then `repeats` timings of a
loop long enough to dwarf the timer, each synchronised with the device.

Before a row is timed, its implementation's outputs (and, for backward rows, its gradients) are
compared with the torch reference's on the same inputs: a fast wrong kernel is no speed-up. A
row that disagrees, or raises, is not timed; the report records why in its `error` and lists it
in `failed`, and `bench kernels` exits 1.
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
# The fast kernels and torch.compile reduce in another order than the eager reference (float32
# everywhere): the tolerance the kernel tests hold them to.
RTOL = ATOL = 1e-5


@dataclass
class Row:
    kernel: str
    shape: str
    impl: str  # torch | torch.compile | numba | triton
    mean_us: float | None  # None on a row with an error
    std_us: float | None
    speedup: float | None  # reference time / this time (the eager torch reference is 1.0)
    error: str | None = None  # why the row was not timed: it disagrees with the reference, or raised


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


def _outputs(fn: Callable, case: Case) -> list[torch.Tensor]:
    """What one call gives, as a flat list: its outputs, then for backward rows the gradients
    with respect to args[0] and args[1]."""
    out = fn(*case.args)
    if case.backward:
        return [out.detach(), *torch.autograd.grad(out.sum(), list(case.args[:2]))]
    return [t.detach() for t in (out if isinstance(out, tuple) else (out,))]


def disagreement(expected: list[torch.Tensor], got: list[torch.Tensor]) -> str | None:
    """None when `got` matches the reference's `expected` (values, dtypes, shapes; bool and
    integer outputs exactly), else one line saying where it does not."""
    if len(got) != len(expected):
        return f"returned {len(got)} outputs, the reference {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        try:
            torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL, check_stride=False)
        except AssertionError as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            return f"output {i} differs from the torch reference: {detail}"
    return None


def _checked(fn: Callable, case: Case, expected: list[torch.Tensor]) -> str | None:
    try:
        return disagreement(expected, _outputs(fn, case))
    except Exception as err:  # a kernel that raises fails its row, not the whole benchmark
        return f"raised {type(err).__name__}: {err}"


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

    def timed(case: Case, impl: str, fn: Callable, error: str | None, ref_mean: float) -> Row:
        if error is not None:
            log.error("%s %s %s: %s", case.kernel, case.shape, impl, error)
            return Row(case.kernel, case.shape, impl, None, None, None, error)
        mean, std = _time(_bind(fn, case), dev, repeats)
        return Row(case.kernel, case.shape, impl, mean, std, ref_mean / mean)

    for case in _cases(dev):
        expected = _outputs(case.reference, case)
        ref_mean, ref_std = _time(_bind(case.reference, case), dev, repeats)
        rows.append(Row(case.kernel, case.shape, "torch", ref_mean, ref_std, 1.0))
        if compile_reference:
            compiled = torch.compile(case.reference, dynamic=False)
            try:
                got = _outputs(compiled, case)  # compiles: a failure here is the machine's, not a wrong result
            except Exception as err:  # e.g. no C++ compiler for inductor on this machine
                notes.append(f"torch.compile of the references failed ({type(err).__name__}: {err}); rows left out")
                compile_reference = False
            else:
                rows.append(timed(case, "torch.compile", compiled, disagreement(expected, got), ref_mean))
        for impl in impls:
            fast = functools.partial(case.fast, impl=impl)
            rows.append(timed(case, impl, fast, _checked(fast, case, expected), ref_mean))
        log.info("%s %s done", case.kernel, case.shape)
    failed = [f"{r.kernel} {r.shape} {r.impl}: {r.error}" for r in rows if r.error is not None]
    report = {
        "benchmark": "kernels",
        **environment(dev),
        "config": {"device": dev.type, "repeats": repeats, "cpu_threads": torch.get_num_threads(), "batch": BATCH, "primary_classes": PRIMARY_CLASSES,
                   "aux_classes": AUX_CLASSES, "image_sizes": IMAGE_SIZES, "pad": PAD,
                   "compile_reference": compile_reference, "impls": ["torch"] + impls},
        "notes": notes,
        "failed": failed,
        "rows": [asdict(r) for r in rows],
    }
    write_report(report, out)
    return report


def format_table(report: dict) -> str:
    """A markdown table of the report (also what docs/benchmarks.md shows)."""
    lines = ["| kernel | shape | impl | mean (us) | std (us) | speed-up vs torch |", "|---|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        if r.get("error"):
            lines.append(f"| {r['kernel']} | {r['shape']} | {r['impl']} | - | - | wrong: {r['error']} |")
            continue
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['impl']} | {r['mean_us']:.1f} | {r['std_us']:.1f} "
                     f"| {r['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(format_table(run()))
