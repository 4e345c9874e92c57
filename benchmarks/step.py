"""Training-step benchmark: the engine's step against the plain reference and the naive step.

Every row trains its own copy of one set of initial weights on one fixed batch (random images in
[0, 1], random labels): the engine as the trainer runs it (resolved runtime: channels-last,
autocast, torch.compile of the trunk, kernel choice), the reference (benchmarks/reference_step.py:
eager, fp32, NCHW, input-only attack gradients, TRADES clean logits recomputed at every attack
step) and the naive step (the reference with `loss.backward()` in the attack).

Timing is honest in airbench's sense: `warmup` untimed steps per row first (torch.compile,
numba compilation, and the first BiaMAT step that fixes omega), then `repeats` rounds in which
every row times `steps` steps in turn, so load changes on a shared machine hit all rows alike;
each timing is synchronised with the device. Images/s counts primary + auxiliary images. The
ratios engine/reference and engine/naive are taken per round (paired) and then averaged.

MFU (CUDA only): model FLOPs of the engine's algorithm per step (analytic conv + linear FLOPs of
the WideResNet times the forward-equivalents the step runs, see `step_forward_units`) over time,
over the GPU's dense bf16/fp16 tensor peak. Every row is divided by the same model FLOPs, so the
reference's wasted forwards count as time, not as useful work.

Every row steps through `engine.step.TrainStep`, the object the trainer trains with, and the
engine rows compile their trunk with the trainer's `compile_trunk`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.common import device_name, environment, mean_std, set_cpu_threads, sync, write_report
from benchmarks.reference_step import NAIVE_STEPS, REFERENCE_STEPS
from engine.arch import RESNET_BLOCKS
from engine.config import AttackConfig, MethodConfig, RuntimeConfig
from engine.methods import METHODS, MethodState, StepContext
from engine.models import build, parse_arch
from engine.runtime import Runtime, apply_backend_flags, resolve_runtime
from engine.step import Objective, TrainStep, compile_trunk
from kernels.errors import InputError
from loaders.types import Batch

log = logging.getLogger(__name__)

# Dense bf16/fp16 tensor-core peak FLOP/s by GPU name (vendor data sheets, without sparsity).
# Checked in order: the first entry whose words all occur in the device name wins.
PEAK_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIE"), 756e12),
    (("H100", "HBM3"), 989e12),  # SXM boards report "NVIDIA H100 80GB HBM3"
    (("H100", "SXM"), 989e12),
    (("H200",), 989e12),  # same compute as the H100 SXM
    (("A100",), 312e12),
    (("V100",), 125e12),  # fp16 (V100 has no bf16)
)

# Paper settings per method (DESIGN.md "The algorithm", Table 12 / Appendix E).
METHOD_DEFAULTS = {
    "at": (dict(alpha=1.0, pi=0.55), dict(eps=8 / 255, step_size=2 / 255)),
    "trades": (dict(alpha=0.5, pi=0.5, beta=6.0), dict(eps=0.031, step_size=0.007)),
}


def peak_flops(device_name: str) -> float | None:
    """Dense bf16/fp16 peak FLOP/s of a GPU by its name, or None when the table does not know it."""
    upper = device_name.upper()
    for words, peak in PEAK_FLOPS:
        if all(w in upper for w in words):
            return peak
    return None


def _conv_out(size: int, stride: int) -> int:
    # 3x3 convs have padding 1 and 1x1 shortcuts padding 0: both give ceil(size / stride).
    return -(-size // stride)


def analytic_forward_flops(model_name: str, size: int, num_classes: int = 10) -> int:
    """FLOPs (2 x multiply-accumulates of convolutions and the primary linear head) of one forward
    of `wrn-D-K` or `resnet-D` on one size x size image; BatchNorm, ReLU and pooling are not
    counted, as in the published figures (WRN-28-10 at 32x32: 10.49 GFLOP; CIFAR ResNet-18:
    0.56 GMAC)."""
    arch = parse_arch(model_name)
    if arch.family == "resnet":
        stem, stages = arch.width, [(arch.width * 2**i, 1 if i == 0 else 2, n)
                                    for i, n in enumerate(RESNET_BLOCKS[arch.depth])]
    else:
        n = (arch.depth - 4) // 6
        stem, stages = 16, [(16 * arch.width, 1, n), (32 * arch.width, 2, n), (64 * arch.width, 2, n)]
    macs = 3 * stem * 9 * size * size  # stem conv
    in_ch, hw = stem, size
    for out_ch, stride, blocks in stages:
        for i in range(blocks):
            s = stride if i == 0 else 1
            hw_out = _conv_out(hw, s)
            macs += in_ch * out_ch * 9 * hw_out * hw_out  # conv1 (strided)
            macs += out_ch * out_ch * 9 * hw_out * hw_out  # conv2
            if in_ch != out_ch or s != 1:
                macs += in_ch * out_ch * hw_out * hw_out  # 1x1 shortcut
            in_ch, hw = out_ch, hw_out
    macs += in_ch * num_classes  # primary head
    return 2 * macs


def step_forward_units(method: str, impl: str, n_pri: int, n_aux: int, attack_steps: int, routed: bool) -> int:
    """Forward-equivalents of one training step, summed over images, for what each implementation
    runs. Units: a forward is 1, a backward to the input only is 1, a backward that also computes
    weight gradients is 2. Steady state after warm-up: omega is fixed, so routing scores only
    the auxiliary batch (the engine's TRADES reuses its clean eval logits for it).

    AT, PGD-K: engine and reference 2K + 3 per image (23 for PGD-10), naive 3K + 3 (33).
    TRADES: engine 1 (clean logits once) + 2K + 6 (clean and adversarial forwards, both
    backpropagated); reference 3K + 6 (a clean forward at every attack step); naive 6K + 6.
    """
    n = n_pri + n_aux
    k = attack_steps
    if method == "at":
        per_image = {"engine": 2 * k + 3, "reference": 2 * k + 3, "naive": 3 * k + 3}[impl]
        return n * per_image + (n_aux if routed else 0)
    if method == "trades":
        per_image = {"engine": 2 * k + 7, "reference": 3 * k + 6, "naive": 6 * k + 6}[impl]
        return n * per_image + (n_aux if routed and impl != "engine" else 0)
    raise ValueError(f"unknown method {method!r}: expected at or trades")


@dataclass
class Variant:
    """One row: an implementation with its own model copy, optimiser and method state, stepped
    by the trainer's own `TrainStep` (only the objective and the runtime differ between rows)."""

    method: str
    impl: str  # engine | reference | naive
    label: str
    train_step: TrainStep
    batch: Batch
    ctx: StepContext
    settings: dict
    runtime: Runtime | None = None
    """The engine rows' runtime: its process-wide switches (cuDNN autotuning) are set before each
    of the row's steps, as rows take turns within a round. None for the reference rows."""
    seconds: list[float] = field(default_factory=list)

    @property
    def state(self) -> MethodState:
        return self.train_step.state

    def step(self) -> None:
        if self.runtime is not None:
            apply_backend_flags(self.runtime)
        elif self.batch.x_pri.is_cuda:
            torch.backends.cudnn.benchmark = False  # the reference rows run as plain PyTorch does
        self.train_step(self.batch, self.ctx)


def make_batch(n_pri: int, n_aux: int, size: int, aux_classes: int, device: torch.device,
                channels_last: bool, seed: int) -> Batch:
    """One fixed step batch: random [0, 1] images and random labels (one auxiliary dataset)."""
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_pri = torch.rand(n_pri, 3, size, size, generator=g)  # (B, 3, H, W)
    x_aux = torch.rand(n_aux, 3, size, size, generator=g)  # (Ba, 3, H, W)
    return Batch(
        x_pri=x_pri.to(device).contiguous(memory_format=fmt), y_pri=torch.randint(0, 10, (n_pri,), generator=g).to(device),
        x_aux=x_aux.to(device).contiguous(memory_format=fmt),
        y_aux=torch.randint(0, aux_classes, (n_aux,), generator=g).to(device),
        aux_source=torch.zeros(n_aux, dtype=torch.int64, device=device), aux_sizes=(n_aux,),
    )


def _train_step(objective: Objective, model: nn.Module, scaler: torch.amp.GradScaler) -> TrainStep:
    # A small lr keeps many steps on a random batch finite; the cost of a step does not depend on it.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return TrainStep(model, objective, optimizer, scaler, MethodState())


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _on_off(value: str) -> list[bool]:
    choices = _split(value)
    if not choices or any(c not in ("off", "on") for c in choices):
        raise InputError(f"cudnn_benchmark {value!r}: expected off, on, or off,on")
    return [c == "on" for c in choices]


def build_variants(method: str, base: nn.Module, *, device: str, n_pri: int, n_aux: int, size: int,
                   aux_classes: int, aux_mode: str, attack_steps: int, compile: str, precision: str,
                   kernels: str, seed: int, bn_stats: str = "step", cudnn_benchmark: str = "off",
                   baselines: bool = True, compile_dynamic: str = "auto") -> list[Variant]:
    """The engine rows (every combination of the comma-separated compile, compile_dynamic (auto,
    true, false), kernels, cudnn_benchmark (off, on) and, for AT, attack.bn_stats choices), then the reference and the naive rows (with the first bn_stats
    choice), for one method. TRADES attacks in eval mode whatever bn_stats says: one choice."""
    method_kw, attack_kw = METHOD_DEFAULTS[method]
    mcfg = MethodConfig(name=method, aux_mode=aux_mode, **method_kw)
    bn_choices = _split(bn_stats) if method == "at" else _split(bn_stats)[:1]
    acfg = AttackConfig(steps=attack_steps, bn_stats=bn_choices[0], **attack_kw)
    variants = []
    dynamic_choices = _split(compile_dynamic)
    for compile_choice, dynamic_choice, kernel_choice, cudnn_choice, bn_choice in itertools.product(
            _split(compile), dynamic_choices, _split(kernels), _on_off(cudnn_benchmark), bn_choices):
        # One batch shape per row, as training with data.drop_last has (drop_last=True), so
        # compile_dynamic = auto resolves as it would there.
        rt, resolved = resolve_runtime(RuntimeConfig(device=device, precision=precision, compile=compile_choice,
                                                     compile_dynamic=dynamic_choice, kernels=kernel_choice,
                                                     cudnn_benchmark=cudnn_choice), drop_last=True)
        model = copy.deepcopy(base).to(rt.device)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        row_attack = dataclasses.replace(acfg, bn_stats=bn_choice)
        ctx = StepContext(method=mcfg, attack=row_attack, in_warmup=False, trunk=compile_trunk(model, rt),
                          autocast=rt.autocast(), kernel_impl=rt.kernels)
        settings = {"precision": rt.precision, "compile": resolved.compile,
                    "compile_dynamic": resolved.compile_dynamic, "kernels": rt.kernels,
                    "channels_last": rt.channels_last, "cudnn_benchmark": rt.cudnn_benchmark,
                    "bn_stats": bn_choice if method == "at" else None}
        bn_label = f", bn {bn_choice}" if len(bn_choices) > 1 else ""
        cudnn_label = ", cudnn autotune" if rt.cudnn_benchmark else ""
        dynamic_label = f", dynamic {resolved.compile_dynamic}" if len(dynamic_choices) > 1 else ""
        label = (f"engine ({rt.precision}, compile {resolved.compile}{dynamic_label}, kernels {rt.kernels}"
                 f"{cudnn_label}{bn_label})")
        batch = make_batch(n_pri, n_aux, size, aux_classes, rt.device, rt.channels_last, seed)
        variants.append(Variant(method, "engine", label, _train_step(METHODS[method], model, rt.grad_scaler()),
                                batch, ctx, settings, rt))
    dev = variants[0].batch.x_pri.device
    for impl, table in (("reference", REFERENCE_STEPS), ("naive", NAIVE_STEPS)) if baselines else ():
        model = copy.deepcopy(base).to(dev)
        ctx = StepContext(method=mcfg, attack=acfg, in_warmup=False, trunk=model.features)
        batch = make_batch(n_pri, n_aux, size, aux_classes, dev, False, seed)
        settings = {"precision": "fp32", "compile": "off", "kernels": "none", "channels_last": False,
                    "bn_stats": acfg.bn_stats if method == "at" else None}
        disabled = torch.amp.GradScaler(dev.type, enabled=False)  # fp32: scale 1, plain optimizer.step
        variants.append(Variant(method, impl, f"{impl} ({_reference_label(dev)}, eager, NCHW)",
                                _train_step(table[method], model, disabled), batch, ctx, settings))
    return variants


def _dynamo_counts() -> dict[str, int]:
    """torch.compile's running totals: graphs compiled, graph breaks, and CUDA-graph skips (the
    reason reduce-overhead silently runs without CUDA graphs: a CPU tensor, a mutated input...)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # a torch without dynamo: nothing compiled, nothing to count
        return {"graphs": 0, "graph_breaks": 0, "cudagraph_skips": 0}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(sum(v for k, v in counters["inductor"].items() if k.startswith("cudagraph_skip")))}


def _counts_since(before: dict[str, int]) -> dict[str, int]:
    now = _dynamo_counts()
    return {k: now[k] - before[k] for k in now}


def _reference_label(dev: torch.device) -> str:
    # On CUDA, torch runs fp32 convolutions in TF32 by default (cudnn.allow_tf32): the baseline
    # is what plain PyTorch code gets, so that is what it is called.
    if dev.type == "cuda" and torch.backends.cudnn.allow_tf32:
        matmul = "TF32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
        return f"fp32 with TF32 convolutions, {matmul} matmuls"
    return "fp32"


def run(method: str = "at", model_name: str = "wrn-10-2", batch: int = 64, aux_batch: int = 64,
        aux_classes: int = 1000, size: int = 32, steps: int = 2, warmup: int = 2, repeats: int = 3,
        attack_steps: int = 10, aux_mode: str = "biamat", device: str = "auto", compile: str = "auto",
        precision: str = "auto", kernels: str = "auto", threads: int | None = None, seed: int = 0,
        bn_stats: str = "step", cudnn_benchmark: str = "off", compile_dynamic: str = "auto", baselines: bool = True,
        measured_peak: float | None = None, out: str | Path | None = None) -> dict:
    """Times the engine, reference and naive steps side by side; returns (and optionally writes)
    the JSON report. `compile`, `kernels`, `cudnn_benchmark` and `bn_stats` (attack.bn_stats, AT
    only) may list several choices (`on,off,reduce-overhead`, `auto,torch`, `off,on`,
    `step,every_forward`): each combination is an engine row. `baselines=False` leaves out the
    reference and naive rows (a suite times them once, not in every step); the rows then have no
    paired ratios. `measured_peak`: a bf16 matmul rate measured on this device (FLOP/s), a second
    MFU denominator beside the data sheet's.

    With `out`, the report is rewritten after every row's warm-up and every timed round, so a run
    cut short (a time limit, a crash in a later row) leaves every figure it had measured."""
    methods = ["at", "trades"] if method == "both" else [method]
    for m in methods:
        if m not in METHOD_DEFAULTS:
            raise InputError(f"--method must be at, trades or both, got {method!r}")
    if warmup < 1:
        raise InputError("--warmup must be at least 1: the first BiaMAT step fixes omega and compiles")
    if measured_peak is not None and not (math.isfinite(measured_peak) and measured_peak > 0):
        raise InputError(f"measured peak {measured_peak!r}: expected a positive number of FLOP/s")
    if os.environ.get("BIAMAT_KERNELS"):
        log.warning("BIAMAT_KERNELS=%s overrides every engine row's kernel choice", os.environ["BIAMAT_KERNELS"])
    if threads is not None:
        set_cpu_threads(threads)
    torch.manual_seed(seed)
    arch = parse_arch(model_name)
    base = build(model_name, 10, (aux_classes,))
    variants = [v for m in methods for v in build_variants(
        m, base, device=device, n_pri=batch, n_aux=aux_batch, size=size, aux_classes=aux_classes,
        aux_mode=aux_mode, attack_steps=attack_steps, compile=compile, precision=precision, kernels=kernels,
        seed=seed, bn_stats=bn_stats, cudnn_benchmark=cudnn_benchmark, baselines=baselines,
        compile_dynamic=compile_dynamic)]
    dev = variants[0].batch.x_pri.device
    timing = Timing(variants, steps, warmup, repeats, os.getloadavg())
    report = {
        "benchmark": "step",
        **environment(dev),
        "config": {
            "method": method, "model": model_name, "depth_width": [arch.depth, arch.width],
            "batch": batch, "aux_batch": aux_batch,
            "aux_classes": aux_classes, "size": size, "attack_steps": attack_steps, "aux_mode": aux_mode,
            "steps_per_repeat": steps, "warmup": warmup, "repeats": repeats, "device": dev.type,
            "compile": compile, "precision": precision, "kernels": kernels, "bn_stats": bn_stats,
            "cudnn_benchmark": cudnn_benchmark, "compile_dynamic": compile_dynamic, "baselines": baselines, "cpu_threads": torch.get_num_threads(),
            "seed": seed, "data": "random images in [0, 1], random labels, one fixed batch",
            "biamat_kernels_env": os.environ.get("BIAMAT_KERNELS"),
            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        },
        "forward_flops_per_image": analytic_forward_flops(model_name, size, 10),
        "peak_flops": peak_flops(device_name(dev)) if dev.type == "cuda" else None,
        "measured_peak_flops": measured_peak,
    }

    def publish() -> dict:
        report.update(timing.results(report, methods))
        write_report(report, out)
        return report

    for v in variants:
        timing.warm_up(v)
        publish()
    for r in range(repeats):
        timing.round()
        if r == repeats - 1:
            timing.load_after = os.getloadavg()
        publish()
    return report


@dataclass
class Timing:
    """The state of one `run`: which rows are warm, how long warm-up (compile) took, the timed
    rounds so far. `results` turns whatever has been measured into the report's rows at any point."""

    variants: list[Variant]
    steps: int
    warmup: int
    repeats: int
    load_before: tuple[float, ...]
    load_after: tuple[float, ...] | None = None
    warm: dict[int, dict] = field(default_factory=dict)
    rounds_done: int = 0

    def warm_up(self, v: Variant) -> None:
        dev = v.batch.x_pri.device
        before = _dynamo_counts()
        start = time.perf_counter()
        v.step()
        sync(dev)
        first = time.perf_counter() - start  # the first step compiles (trunk, numba, Triton)
        for _ in range(self.warmup - 1):
            v.step()
        sync(dev)
        total = time.perf_counter() - start
        self.warm[id(v)] = {"first_step_seconds": first, "warmup_seconds": total, **_counts_since(before)}
        log.info("%s %s: warm-up %.1f s (first step %.1f s)", v.method, v.label, total, first)

    def round(self) -> None:
        for v in self.variants:  # interleaved: every round times every row once
            dev = v.batch.x_pri.device
            before = _dynamo_counts()
            sync(dev)
            start = time.perf_counter()
            for _ in range(self.steps):
                v.step()
            sync(dev)
            v.seconds.append(time.perf_counter() - start)
            late = _counts_since(before)
            self.warm[id(v)]["graphs_while_timed"] = self.warm[id(v)].get("graphs_while_timed", 0) + late["graphs"]
        self.rounds_done += 1
        log.info("round %d/%d done", self.rounds_done, self.repeats)

    def results(self, report: dict, methods: list[str]) -> dict:
        cfg = report["config"]
        images = cfg["batch"] + cfg["aux_batch"]
        routed = cfg["aux_mode"] == "biamat"
        fwd = report["forward_flops_per_image"]
        peaks = {"mfu": report["peak_flops"], "mfu_measured_peak": report["measured_peak_flops"]}
        rows = []
        for m in methods:
            group = [v for v in self.variants if v.method == m]
            ref = next((v for v in group if v.impl == "reference"), None)
            naive = next((v for v in group if v.impl == "naive"), None)
            model_flops = fwd * step_forward_units(m, "engine", cfg["batch"], cfg["aux_batch"], cfg["attack_steps"],
                                                   routed)
            for v in group:
                if not v.seconds:
                    continue  # warm but not timed yet: its warm-up is in "warmup"
                mean, std = mean_std([self.steps * images / s for s in v.seconds])
                step_s = statistics.mean(v.seconds) / self.steps
                row = {"method": m, "impl": v.impl, "label": v.label, **v.settings,
                       "images_per_s": mean, "images_per_s_std": std, "step_seconds": step_s,
                       "rounds": len(v.seconds), **self.warm.get(id(v), {})}
                for name, other in (("vs_reference", ref), ("vs_naive", naive)):
                    paired = [a / b for a, b in zip(other.seconds, v.seconds)] if other is not None else []
                    ratio = mean_std(paired) if paired else (None, None)
                    row[name], row[f"{name}_std"] = ratio
                row["executed_flops_per_step"] = fwd * step_forward_units(
                    m, v.impl, cfg["batch"], cfg["aux_batch"], cfg["attack_steps"], routed)
                row["model_flops_per_step"] = model_flops
                for key, peak in peaks.items():
                    row[key] = (model_flops / step_s / peak) if peak else None
                row["omega"] = v.state.omega
                rows.append(row)
        warm = [{"method": v.method, "label": v.label, **self.warm[id(v)]} for v in self.variants if id(v) in self.warm]
        notes = []
        if cfg["device"] == "cuda" and report["peak_flops"] is None:
            notes.append(f"peak FLOP/s of {report['device']!r} unknown: data-sheet MFU left out")
        if self.rounds_done < self.repeats:
            notes.append(f"partial: {len(warm)}/{len(self.variants)} rows warm, "
                         f"{self.rounds_done}/{self.repeats} rounds timed")
        return {"complete": self.rounds_done == self.repeats and self.load_after is not None,
                "load_average": {"before": self.load_before, "after": self.load_after},
                "notes": notes, "warmup": warm, "rows": rows}


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(report: dict) -> str:
    """A markdown table of the report (also what docs/benchmarks.md shows)."""
    lines = ["| method | step | images/s | std | vs reference | vs naive | MFU |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['label']} | {r['images_per_s']:.1f} | {r['images_per_s_std']:.1f} "
                     f"| {ratio(r['vs_reference'])} | {ratio(r['vs_naive'])} | {percent(r['mfu'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(format_table(run()))
