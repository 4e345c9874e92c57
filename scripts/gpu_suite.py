"""Every GPU check and figure in one command (scripts/gpu-suite.sh), most important first, so a
run cut short by the machine's time limit still leaves the results that matter most.

    1 environment   GPU, driver, torch/triton/numba versions, the peak FLOP/s MFU divides by
    2 gpu tests     pytest -m gpu: CUDA variants of kernels, PGD, routing, loader, trainer
    3 bench step    WRN-28-10, 128 + 128 images: engine (bf16, channels-last, compile on/off,
                    Triton and torch kernels) vs reference vs naive; fp16 + GradScaler (V100 path)
    4 bench         kernels, loader (resident), eval (clean, PGD, CW, APGD on WRN-28-10)
    5 a real run    train on shapes (compile, mixed precision), Ctrl-C after the first epoch,
                    --resume to the end, eval
    6 step levers   AT step with compile's reduce-overhead mode (CUDA graphs) and cuDNN
                    autotuning, each off and on: the settings that stay off until measured

Each step runs as its own process with a time limit, its output in OUT/logs/; a failing step is
recorded and the next one runs. OUT/summary.md (one table of every figure and failure, with
the revision) is rewritten after every step. `--smoke` runs the same steps on the CPU with tiny
sizes (tests/test_gpu_suite.py runs it, so the suite cannot rot between GPU visits).

Runs from a checkout with PYTHONPATH=. and nothing installed beyond torch, numpy, typer, rich,
safetensors (and triton, numba where present). Pure-Python dependencies a bare machine lacks
(tomli-w) can travel in build/pydeps: `scripts/gpu-suite.sh --pack` fills it from this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PYDEPS = REPO / "build" / "pydeps"
PACKED = ("tomli_w",)  # pure Python, needed to write config.toml, absent from the bare GPU images


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int
    figures: Callable[[Path], list[str]] = lambda out: []
    """Lines for the summary, read from the step's JSON output after it ran."""


@dataclass
class Result:
    name: str
    status: str  # ok | failed (rc N) | timeout | skipped
    seconds: float
    figures: list[str] = field(default_factory=list)
    log: str = ""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


def _rows(path: Path, fmt: Callable[[dict], str]) -> list[str]:
    if not path.exists():
        return []
    return [fmt(r) for r in json.loads(path.read_text())["rows"]]


def _step_row(r: dict) -> str:
    mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
    return (f"{r['method']} {r['label']}: {r['images_per_s']:.1f} img/s, {r['vs_reference']:.2f}x reference, "
            f"{r['vs_naive']:.2f}x naive{mfu}")


def steps(out: Path, smoke: bool) -> list[Step]:
    """The suite, in order. `smoke`: tiny sizes on the CPU, the same commands."""
    device = "cpu" if smoke else "cuda"
    if smoke:
        step_work = ["--model", "wrn-10-1", "--batch", "4", "--aux-batch", "4", "--aux-classes", "7", "--size", "8",
                     "--attack-steps", "1", "--steps", "1", "--warmup", "1", "--repeats", "1"]
        engine = ["--compile", "off", "--precision", "fp32", "--kernels", "torch"]
        fp16 = None  # fp16 autocast needs CUDA
        levers = ["--compile", "off", "--precision", "fp32", "--kernels", "torch", "--cudnn-benchmark", "off,on"]
    else:
        step_work = ["--model", "wrn-28-10", "--batch", "128", "--aux-batch", "128", "--aux-classes", "1000",
                     "--size", "32", "--attack-steps", "10", "--steps", "5", "--warmup", "3", "--repeats", "3"]
        engine = ["--compile", "on,off", "--precision", "bf16", "--kernels", "triton,torch"]
        fp16 = ["--compile", "off", "--precision", "fp16", "--kernels", "triton"]
        levers = ["--compile", "on,reduce-overhead", "--precision", "bf16", "--kernels", "triton",
                  "--cudnn-benchmark", "off,on"]
    run = out / "run"
    data = "?n=128&size=16" if smoke else "?n=4000"
    train = _cli("train", "--primary", f"shapes:primary{data}", "--aux", f"shapes:aux{data}",
                 "--test", f"shapes:primary{data}", "--model", "wrn-10-1" if smoke else "wrn-16-4",
                 "--epochs", "3" if smoke else "4", "--device", device, "--out", str(run),
                 "--set", "method.warmup_epochs=1", "--set", "eval.n=32" if smoke else "eval.n=500",
                 "--set", "attack.steps=1" if smoke else "attack.steps=10", "--set", "eval.steps=2" if smoke else "eval.steps=10",
                 "--set", f"runtime.compile={'off' if smoke else 'on'}")
    suite = [
        Step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           f"--junitxml={out / 'pytest-gpu.xml'}"], 90 if smoke else 300, _pytest_figures),
        Step("bench step (AT and TRADES)", _cli("bench", "step", "--method", "both", *step_work, *engine,
                                                "--device", device, "--out", str(out / "step.json")),
             120 if smoke else 420, lambda o: _rows(o / "step.json", _step_row)),
    ]
    if fp16 is not None:
        suite.append(Step("bench step (fp16 + GradScaler, the V100 path)",
                          _cli("bench", "step", "--method", "at", *step_work, *fp16, "--device", device,
                               "--out", str(out / "step-fp16.json")),
                          240, lambda o: _rows(o / "step-fp16.json", _step_row)))
    suite += [
        Step("bench kernels", _cli("bench", "kernels", "--device", device, "--repeats", "2" if smoke else "20",
                                   *(["--no-compile"] if smoke else []), "--out", str(out / "kernels.json")), 120 if smoke else 240,
             lambda o: _rows(o / "kernels.json", lambda r: f"{r['kernel']} {r['shape']} {r['impl']}: "
                                                              f"{r['mean_us']:.1f} us, {r['speedup']:.2f}x torch")),
        Step("bench loader (resident)", _cli("bench", "loader", "--backends", "resident", "--device", device,
                                             "--n", "256" if smoke else "10000", "--repeats", "2" if smoke else "3",
                                             "--out", str(out / "loader.json")), 120 if smoke else 240,
             lambda o: _rows(o / "loader.json", lambda r: f"{r['backend']}: {r['images_per_s_mean']:.0f} img/s "
                                                              f"(+- {r['images_per_s_std']:.0f})")),
        Step("bench eval", _cli("bench", "eval", "--device", device, "--model", "wrn-10-1" if smoke else "wrn-28-10",
                                "--n", "8" if smoke else "256", "--batch-size", "8" if smoke else "256", "--steps", "1" if smoke else "10",
                                "--repeats", "1" if smoke else "3", "--out", str(out / "eval-bench.json")),
             120 if smoke else 300, lambda o: _eval_bench_figures(o / "eval-bench.json")),
        Step("train, Ctrl-C, resume", ["__train_interrupt_resume__", *train], 240 if smoke else 600,
             lambda o: _train_figures(run)),
        Step("eval the trained model", _cli("eval", str(run), "--test", f"shapes:primary{data}",
                                            "--attacks", "clean,pgd5" if smoke else "clean,pgd20,cw20",
                                            "--device", device, "--n", "32" if smoke else "500"),
             120 if smoke else 300, lambda o: _eval_figures(run)),
        # Last, so a cut-short run keeps the checks above: the step levers of issue 13 part 2 that
        # are off by default until measured (CUDA graphs through compile's reduce-overhead mode,
        # cuDNN autotuning), AT only, against compile on without autotuning.
        Step("bench step levers (reduce-overhead, cudnn autotune)",
             _cli("bench", "step", "--method", "at", *step_work, *levers, "--device", device,
                  "--out", str(out / "step-levers.json")),
             120 if smoke else 360, lambda o: _rows(o / "step-levers.json", _step_row)),
    ]
    return suite


def _eval_bench_figures(path: Path) -> list[str]:
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    rows = [f"clean {r['name']} ({r['precision']}): {r['images_per_s']:.0f} img/s" for r in report["clean"]]
    rows += [f"{r['name']}: {r['images_per_s']:.1f} img/s" for r in report["attacks"]]
    return rows + [f"skipped {name}: {why.split(':')[0]}" for name, why in report.get("skipped", {}).items()]


def _pytest_figures(out: Path) -> list[str]:
    xml = out / "pytest-gpu.xml"
    if not xml.exists():
        return []
    import xml.etree.ElementTree as ET

    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return [", ".join(f"{k} {suite.get(k)}" for k in keys)]


def _train_figures(run: Path) -> list[str]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [f"epoch {r['epoch']}: loss {r['loss']:.3f}, clean {r.get('clean_acc', 0):.3f}, "
            f"robust {r.get('robust_acc', 0):.3f}, {r['images_per_s']:.0f} img/s" for r in records]


def _eval_figures(run: Path) -> list[str]:
    path = run / "eval.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    return [f"clean {report['clean_acc']:.3f}"] + [f"{k} {v['robust_acc']:.3f}" for k, v in report["attacks"].items()]


def _train_interrupt_resume(argv: list[str], log, timeout_s: int) -> int:
    """`train` until its first epoch is saved, Ctrl-C, then `train --resume` to the end: the
    loss falls, the resume continues where the checkpoint stopped."""
    run = Path(argv[argv.index("--out") + 1])
    start = time.monotonic()
    first = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    while first.poll() is None and not (run / "last.pt").exists():
        if time.monotonic() - start > timeout_s / 2:
            first.kill()
            return 124
        time.sleep(0.1)
    if first.poll() is not None:
        log.write(f"\n--- the run ended (rc {first.returncode}) before it could be interrupted ---\n".encode())
        return first.returncode or 1
    first.send_signal(signal.SIGINT)
    first.wait(timeout=120)
    log.write(f"\n--- interrupted (rc {first.returncode}); resuming ---\n".encode())
    log.flush()
    resumed = subprocess.run([*argv, "--resume"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env(),
                             timeout=max(timeout_s - (time.monotonic() - start), 10))
    return resumed.returncode


def _env() -> dict:
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(PYDEPS)] if PYDEPS.is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def environment(smoke: bool) -> dict:
    import torch

    from benchmarks.common import git_revision
    from benchmarks.step import peak_flops

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
    record = {
        "mode": "smoke (CPU, tiny sizes)" if smoke else "full",
        "git_revision": git_revision(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "device": name, "gpus": torch.cuda.device_count(),
        "peak_bf16_flops": peak_flops(name) if cuda else None,
        "peak_source": "vendor data sheets, dense bf16/fp16 tensor peak without sparsity "
                       "(benchmarks/step.py PEAK_FLOPS)",
    }
    for package in ("triton", "numba", "safetensors", "tomli_w", "ffcv", "nvidia.dali", "pyautoattack"):
        try:
            module = __import__(package, fromlist=["__version__"])
            record[package] = getattr(module, "__version__", "present")
        except ImportError:
            record[package] = None
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True)
        record["nvidia_smi"] = done.stdout.strip()
    return record


def write_summary(out: Path, env: dict, results: list[Result]) -> None:
    lines = [f"# GPU suite: {env['mode']}", "",
             f"revision `{env['git_revision']}`, {env['device']} ({env['gpus']} GPUs), torch {env['torch']} "
             f"(CUDA {env['cuda']}), triton {env['triton']}, numba {env['numba']}, python {env['python']}", ""]
    if env.get("nvidia_smi"):
        lines += [f"nvidia-smi: {env['nvidia_smi']}", ""]
    if env.get("peak_bf16_flops"):
        lines += [f"MFU divides by {env['peak_bf16_flops'] / 1e12:.0f} TFLOP/s ({env['peak_source']}).", ""]
    lines += ["| step | status | seconds | figures | log |", "|---|---|---:|---|---|"]
    for r in results:
        figures = "<br>".join(r.figures) if r.figures else "-"
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {figures} | {r.log} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def pack() -> None:
    """Copies the pure-Python packages a bare GPU machine lacks into build/pydeps (carry it)."""
    PYDEPS.mkdir(parents=True, exist_ok=True)
    for name in PACKED:
        module = __import__(name)
        source = Path(module.__file__).parent
        shutil.copytree(source, PYDEPS / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        print(f"packed {name} from {source} into {PYDEPS / name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Every GPU check and figure in one command.")
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU with tiny sizes")
    parser.add_argument("--pack", action="store_true", help="fill build/pydeps for a bare GPU machine and stop")
    args = parser.parse_args(argv)
    if args.pack:
        pack()
        return 0
    sys.path[:0] = [str(REPO)] + ([str(PYDEPS)] if PYDEPS.is_dir() else [])
    out = Path(os.environ.get("OUT") or REPO / "build" / "gpu-suite").resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = environment(args.smoke)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    if not args.smoke and not env["gpus"]:
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2
    results = [Result("environment", "ok", 0.0, [f"{env['device']}, torch {env['torch']}"], "environment.json")]
    write_summary(out, env, results)
    for number, step in enumerate(steps(out, args.smoke), 1):
        log_path = out / "logs" / f"{number:02d}-{re.sub(r'[^a-z0-9]+', '-', step.name.lower()).strip('-')}.log"
        print(f"[{number}] {step.name} ...", flush=True)
        start = time.monotonic()
        with log_path.open("wb") as log:
            try:
                if step.argv[0] == "__train_interrupt_resume__":
                    rc = _train_interrupt_resume(step.argv[1:], log, step.timeout_s)
                else:
                    rc = subprocess.run(step.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env(),
                                        timeout=step.timeout_s).returncode
                status = "ok" if rc == 0 else ("timeout" if rc == 124 else f"failed (rc {rc})")
            except subprocess.TimeoutExpired:
                status = "timeout"
        try:
            figures = step.figures(out)
        except (OSError, ValueError, KeyError) as err:  # a figure that cannot be read is itself a finding
            figures = [f"figures unreadable: {type(err).__name__}: {err}"]
        results.append(Result(step.name, status, time.monotonic() - start, figures,
                              str(log_path.relative_to(out))))
        print(f"    {status} in {results[-1].seconds:.0f} s", flush=True)
        write_summary(out, env, results)
    failed = [r.name for r in results if r.status != "ok"]
    print(f"summary: {out / 'summary.md'}" + (f"; failed: {', '.join(failed)}" if failed else "; all ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
