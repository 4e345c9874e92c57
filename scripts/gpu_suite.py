"""Every GPU check and figure in one command (scripts/gpu-suite.sh), made for the machine a GPU
visit lends: a few minutes per command, and only a handful of files brought back.

Steps, most decisive first (`--only` takes these keys):
  env              GPU, driver, versions, compute capability; measured bf16 matmul TFLOP/s and
                   device-to-device copy GB/s
  step-eager       bench step, AT, WRN-28-10 128+128 bf16, eager; the reference and naive
                   baselines (timed here once)
  step-compiled    the same compiled (img/s, MFU, compile seconds)
  tests-kernels    the `gpu` tests of kernels, images and loaders (not compiled training)
  train-resume     a short train, Ctrl-C after its first checkpoint, --resume to the end
  eval-run         eval of that run (clean, PGD-20, CW-20), compile off
  step-trades      bench step, TRADES, compiled, with its own baselines
  step-fp16        bench step, AT, fp16 + GradScaler (the V100 path), eager
  bench-eval       clean pass per backend, PGD/CW/APGD rates, 10k-image projections
  bench-kernels    route, PGD update, augmentation kernels against torch
  bench-loader     the resident loader
  levers-graphs    compile reduce-overhead (CUDA graphs) and cuDNN autotuning, off and on
  levers-dynamic   compile for a static batch shape (dynamic=False) against a symbolic one
  levers-autotune  compile max-autotune
  tests-rest       the remaining `gpu` tests (compiled training, DDP, pseudo-label, robustify)

The rules of a visit: `--budget` seconds in all (default 540, under the 10-minute limit of one
command); a step whose estimate (stated below, or measured in an earlier run's figures.json
given with `--estimates`) does not fit in what is left is skipped and says so; every step runs
in its own process group with a time limit. Working files go to a scratch folder (`--work`);
$OUT gets at most three files, rewritten after every step and whenever a running step's results
grow (each bench row and round, each finished test): summary.md, figures.json (every figure
so far, and the step in progress marked `running`) and results.tar.gz (logs and JSON, no
weights). A run killed from outside therefore still reports what it finished and where it was.

`--smoke` rehearses all of it on a CPU with tiny sizes and checks $OUT against the visit's limits
after every write (tests/test_gpu_suite.py). `--pack` copies what a bare GPU machine lacks
(tomli-w, pyautoattack, pytest-timeout: pure Python) into build/pydeps with the revision; carry
that folder. Runs from a checkout with PYTHONPATH=. (the driver sets it).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PYDEPS = REPO / "build" / "pydeps"
REVISION_FILE = PYDEPS / "REVISION"
PACKED = ("tomli_w", "pyautoattack", "pytest_timeout")  # pure Python; absent from the bare GPU image
PACK_SKIP = ("__pycache__", "examples", "*.pt")  # pyautoattack ships 44 MB of example weights

# What comes back from a visit: at most 8 files, 16 MiB each, at most 2 folders down.
OUT_MAX_FILES, OUT_MAX_BYTES, OUT_MAX_DEPTH = 8, 16 * 2**20, 2
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
WORK_MARKER = ".gpu-suite-work"  # marks the scratch folder as the suite's own, so a rerun may clear it
TARBALL_MAX_BYTES = 12 * 2**20  # headroom under the 16 MiB limit
LOG_TAIL_BYTES = 512 * 2**10  # what a log keeps in the tarball when everything would not fit

# gpu tests that need no compiled training: run early, they are quick and decisive.
EARLY_TESTS = ("test_images.py", "test_kernels_augment.py", "test_kernels_pgd.py", "test_kernels_route.py",
               "test_resident.py", "test_dali_backend.py", "test_attacks.py", "test_methods.py")


@dataclass
class Outcome:
    key: str
    name: str
    status: str = "pending"  # pending | running | ok | failed (...) | timeout | skipped (...)
    seconds: float = 0.0
    estimate: float = 0.0
    figures: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    log: str = ""


@dataclass
class Suite:
    """What every step reads: where to write, the mode, and what earlier steps measured."""

    work: Path
    out: Path
    smoke: bool
    outcomes: list[Outcome]
    env: dict = field(default_factory=dict)
    stall: str | None = None
    published: float = 0.0

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"

    def outcome(self, key: str) -> Outcome:
        return next(o for o in self.outcomes if o.key == key)

    # -- publishing -------------------------------------------------------------------------
    def publish(self) -> None:
        """Rewrites the three result files in $OUT (each atomically, via a temporary beside it)."""
        self.published = time.monotonic()
        figures = {"suite": "smoke (CPU, tiny sizes)" if self.smoke else "full", "environment": self.env,
                   "steps": [o.__dict__ for o in self.outcomes]}
        _replace(self.out / "figures.json", (json.dumps(figures, indent=1, default=str) + "\n").encode())
        _replace(self.out / "summary.md", summary(self).encode())
        _replace(self.out / "results.tar.gz", tarball(self.work))
        if self.smoke:
            check_out_limits(self.out)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_out_limits(out: Path) -> None:
    """Fails the rehearsal when $OUT holds what a visit would not bring back."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {OUT_MAX_FILES})"] if len(files) > OUT_MAX_FILES else []
    for p in files:
        if p.stat().st_size > OUT_MAX_BYTES:
            problems.append(f"{p.name}: {p.stat().st_size} bytes (at most {OUT_MAX_BYTES})")
        if len(p.relative_to(out).parts) - 1 > OUT_MAX_DEPTH:
            problems.append(f"{p.relative_to(out)}: more than {OUT_MAX_DEPTH} folders down")
    if problems:
        raise SystemExit(f"$OUT breaks the visit's limits: {'; '.join(problems)}")


def tarball(work: Path) -> bytes:
    """Logs and JSON/XML of the scratch folder, gzipped; no weights, no data. Logs are cut to
    their tails when the whole would not come back."""
    wanted = sorted(p for p in work.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".jsonl", ".xml")
                    and "inductor-cache" not in p.parts)
    for tail in (None, LOG_TAIL_BYTES, 32 * 2**10):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for p in wanted:
                data = p.read_bytes()
                if tail is not None and p.suffix == ".log" and len(data) > tail:
                    data = b"[... cut: the log's last bytes follow ...]\n" + data[-tail:]
                info = tarfile.TarInfo(str(p.relative_to(work)))
                info.size, info.mtime = len(data), int(p.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
        if buffer.tell() <= TARBALL_MAX_BYTES:
            return buffer.getvalue()
    return buffer.getvalue()


def summary(suite: Suite) -> str:
    env = suite.env
    lines = [f"# GPU suite: {'smoke (CPU, tiny sizes)' if suite.smoke else 'full'}", "",
             f"revision `{env.get('git_revision', '?')}`, {env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    lines += ["| step | status | seconds (estimate) | figures |", "|---|---|---:|---|"]
    for o in suite.outcomes:
        figures = "<br>".join(o.figures) if o.figures else "-"
        lines.append(f"| {o.key}: {o.name} | {o.status} | {o.seconds:.0f} ({o.estimate:.0f}) | {figures} |")
    running = [o.key for o in suite.outcomes if o.status == "running"]
    if running:
        lines += ["", f"Step `{running[0]}` is running (or the run was stopped there): figures above are what it "
                      "had measured when this file was written."]
    return "\n".join(lines) + "\n"


# -- running processes --------------------------------------------------------------------

def revision() -> str:
    """$BIAMAT_REVISION, else the file `--pack` wrote (a copied tree has no .git), else git."""
    if os.environ.get("BIAMAT_REVISION"):
        return os.environ["BIAMAT_REVISION"]
    if REVISION_FILE.is_file():
        return REVISION_FILE.read_text().strip()
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def child_env(suite: Suite, extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    paths = [str(REPO)] + ([str(PYDEPS)] if PYDEPS.is_dir() else []) + [str(REPO / "scripts")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    # compiled kernels are reused across the steps' processes (the step benches, train, tests)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(suite.work / "inductor-cache"))
    if suite.smoke:
        env.setdefault("TRITON_INTERPRET", "1")
    env["BIAMAT_REVISION"] = suite.env["git_revision"]
    return env


def _child_setup() -> None:
    # A suite started from nohup, CI or any background job inherits SIGINT ignored, and an
    # ignored signal stays ignored across exec: the Ctrl-C step would never interrupt anything.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # The step dies with the suite: a suite killed at the visit's time limit must not leave a
    # bench holding the GPU for the next command (Linux: PR_SET_PDEATHSIG).
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(suite: Suite, argv: list[str], log, extra_env: dict | None = None) -> subprocess.Popen:
    # A process group of its own (in the suite's session, so a machine that ends the suite's
    # session ends it too), so that a step past its time is killed with everything it started.
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(suite, extra_env),
                            process_group=0, preexec_fn=_child_setup)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


DEADLINE, UNTIL = "deadline", "until"


def watch(suite: Suite, proc: subprocess.Popen, deadline: float, outcome: Outcome, step: "Step",
          until: Callable[[], bool] = lambda: False) -> int | str:
    """Waits for `proc` (or for `until()`), republishing whenever the step's figures change.
    Returns its exit code, DEADLINE (it was killed, with its group) or UNTIL (still running)."""
    shown = outcome.figures
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            kill_group(proc)
            return DEADLINE
        if until():
            return UNTIL
        time.sleep(0.2)
        if time.monotonic() - suite.published > 2.0:
            fresh = step.read(suite, outcome)
            if fresh != shown:
                outcome.figures = shown = fresh
                suite.publish()
    return proc.returncode


def call(suite: Suite, argv: list[str], log, deadline: float, outcome: Outcome, step: "Step",
         extra_env: dict | None = None) -> str:
    rc = watch(suite, start(suite, argv, log, extra_env), deadline, outcome, step)
    return "timeout" if rc == DEADLINE else ("ok" if rc == 0 else f"failed (rc {rc})")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


# -- the steps ----------------------------------------------------------------------------

@dataclass
class Step:
    key: str
    name: str
    estimate_s: float  # on an H100/H200, cold (nothing compiled yet); stated, replaced by --estimates
    smoke_estimate_s: float
    run: Callable[[Suite, Outcome, "Step", object, float], str]
    read: Callable[[Suite, Outcome], list[str]] = lambda suite, outcome: outcome.figures
    needs: tuple[str, ...] = ()


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or caught mid-write by a reader: the next look will see it


# bench step -------------------------------------------------------------------------------

def step_workload(suite: Suite) -> list[str]:
    if suite.smoke:
        return ["--model", "wrn-10-1", "--batch", "4", "--aux-batch", "4", "--aux-classes", "7", "--size", "8",
                "--attack-steps", "1", "--steps", "1", "--warmup", "1", "--repeats", "2", "--threads", "1"]
    return ["--model", "wrn-28-10", "--batch", "128", "--aux-batch", "128", "--aux-classes", "1000", "--size", "32",
            "--attack-steps", "10", "--steps", "5", "--warmup", "2", "--repeats", "3"]


def bench_step(key: str, method: str, engine: list[str], smoke_engine: list[str], baselines: bool) -> Callable:
    def run(suite: Suite, outcome: Outcome, step: Step, log, deadline: float) -> str:
        argv = cli("bench", "step", "--method", method, *step_workload(suite),
                   *(smoke_engine if suite.smoke else engine), "--device", suite.device,
                   "--baselines" if baselines else "--no-baselines", "--out", str(suite.work / f"{key}.json"))
        if suite.env.get("matmul_flops_per_s") and not suite.smoke:
            argv += ["--measured-peak", f"{suite.env['matmul_flops_per_s'] / 1e12:.3f}"]
        if suite.stall == key:  # the rehearsal's step that never ends by itself (killed from outside)
            argv[argv.index("--repeats") + 1] = "100000"
        return call(suite, argv, log, deadline, outcome, step)
    return run


def read_bench_step(suite: Suite, outcome: Outcome) -> list[str]:
    report = _load(suite.work / f"{outcome.key}.json")
    if report is None:
        return []
    outcome.data = {"rows": report["rows"], "warmup": report["warmup"], "complete": report["complete"],
                    "notes": report["notes"]}
    reference = _reference_rates(suite)
    lines = []
    for w in report["warmup"]:
        lines.append(f"{w['method']} {w['label']}: first step {w['first_step_seconds']:.1f} s, warm-up "
                     f"{w['warmup_seconds']:.1f} s, {w['graphs']} graphs, {w['graph_breaks']} breaks, "
                     f"{w['cudagraph_skips']} CUDA-graph skips")
    for r in report["rows"]:
        text = f"{r['method']} {r['label']}: {r['images_per_s']:.1f} img/s ({r['rounds']} rounds)"
        if r.get("mfu") is not None:
            text += f", MFU {100 * r['mfu']:.1f}% of the data sheet"
        if r.get("mfu_measured_peak") is not None:
            text += f", {100 * r['mfu_measured_peak']:.1f}% of the measured matmul rate"
        if r.get("vs_reference") is not None:
            text += f", {r['vs_reference']:.2f}x reference, {r['vs_naive']:.2f}x naive (paired)"
        elif r["method"] in reference:
            text += f", {r['images_per_s'] / reference[r['method']]:.2f}x the reference of an earlier step (unpaired)"
        lines.append(text)
    return lines + [f"note: {n}" for n in report["notes"]]


def _reference_rates(suite: Suite) -> dict[str, float]:
    rates = {}
    for o in suite.outcomes:
        for r in o.data.get("rows", []) if o.key.startswith("step-") else []:
            if r.get("impl") == "reference":
                rates[r["method"]] = r["images_per_s"]
    return rates


# environment --------------------------------------------------------------------------------

def run_env(suite: Suite, outcome: Outcome, step: Step, log, deadline: float) -> str:
    status = call(suite, [sys.executable, "-m", "benchmarks.device", "--device", suite.device,
                          "--out", str(suite.work / "device.json")], log, deadline, outcome, step)
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        suite.env["nvidia_smi"] = done.stdout.strip()
    return status


def read_env(suite: Suite, outcome: Outcome) -> list[str]:
    report = _load(suite.work / "device.json")
    if report is None:
        return []
    suite.env.update({k: report.get(k) for k in ("device", "torch", "git_revision", "compute_capability")})
    suite.env["matmul_flops_per_s"] = report["matmul"]["flops_per_s"]
    suite.env["copy_bytes_per_s"] = report["copy"]["bytes_per_s"]
    outcome.data = report
    lines = [f"{report['device']}, torch {report['torch']}, versions: " +
             ", ".join(f"{k} {v}" for k, v in suite.env.get("packages", {}).items())]
    if report.get("compute_capability"):
        lines.append(f"compute capability {report['compute_capability']}, {report['memory_bytes'] / 2**30:.0f} GiB")
    if suite.env.get("nvidia_smi"):
        lines.append(f"nvidia-smi: {suite.env['nvidia_smi']}")
    lines.append(f"{report['matmul']['dtype']} matmul {report['matmul']['n']}^3: "
                 f"{report['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s; device copy "
                 f"{report['copy']['bytes_per_s'] / 1e9:.1f} GB/s")
    return lines


# pytest -------------------------------------------------------------------------------------

def gpu_test_files(early: bool) -> list[str]:
    files = sorted(p for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    return [str(p.relative_to(REPO)) for p in files if (p.name in EARLY_TESTS) == early]


def pytest_step(early: bool) -> Callable:
    def run(suite: Suite, outcome: Outcome, step: Step, log, deadline: float) -> str:
        jsonl = suite.work / f"{outcome.key}.jsonl"
        argv = [sys.executable, "-m", "pytest", "-q", "-rA", "-m", "gpu", "-p", "no:cacheprovider",
                "-p", "gpu_suite_pytest", f"--junitxml={suite.work / (outcome.key + '.xml')}",
                *gpu_test_files(early)]
        # found at start (_versions, on the steps' path); a plugin by its dist-info's entry point (pack copies it)
        if suite.env["packages"].get("pytest_timeout"):
            argv += ["--timeout", "60" if suite.smoke else "240"]
        else:
            outcome.data["note"] = "pytest-timeout missing: no per-test time limit (run --pack first)"
        status = call(suite, argv, log, deadline, outcome, step, {"GPU_SUITE_TESTS_JSONL": str(jsonl)})
        return "ok" if status == "failed (rc 5)" else status  # rc 5: no test collected (none marked gpu)
    return run


def read_pytest(suite: Suite, outcome: Outcome) -> list[str]:
    path = suite.work / f"{outcome.key}.jsonl"
    if not path.exists():
        return []
    tests = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    outcome.data = {"tests": tests}
    lines = [", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test finished yet"]
    lines += [f"FAILED {t['nodeid']}: {t.get('detail', '').strip().splitlines()[-1:] or ''}"
              for t in tests if t["outcome"] == "failed"]
    lines += [f"{t['nodeid']} {t['seconds']:.1f} s" for t in tests if t["outcome"] == "passed" and t["seconds"] > 5]
    return lines


# a real run ---------------------------------------------------------------------------------

def train_argv(suite: Suite) -> list[str]:
    data = "?n=128&size=16" if suite.smoke else "?n=4000"
    return cli("train", "--primary", f"shapes:primary{data}", "--aux", f"shapes:aux{data}",
               "--test", f"shapes:primary{data}", "--model", "wrn-10-1" if suite.smoke else "wrn-16-4",
               "--epochs", "3" if suite.smoke else "4", "--device", suite.device, "--out", str(suite.work / "run"),
               "--set", "method.warmup_epochs=1", "--set", "eval.n=32" if suite.smoke else "eval.n=500",
               "--set", "attack.steps=1" if suite.smoke else "attack.steps=10",
               "--set", "eval.steps=2" if suite.smoke else "eval.steps=10", "--set", "runtime.compile=off")


def run_train_resume(suite: Suite, outcome: Outcome, step: Step, log, deadline: float) -> str:
    """`train` until its first checkpoint, Ctrl-C (SIGINT, as a terminal sends it), then
    `train --resume` to the end. A run that ignores the interrupt is killed, with its group."""
    argv = train_argv(suite)
    run_dir = suite.work / "run"
    first = start(suite, argv, log)
    rc = watch(suite, first, deadline, outcome, step, until=lambda: (run_dir / "last.pt").exists())
    if rc == DEADLINE:
        return "timeout"
    if rc != UNTIL:
        log.write(f"\n--- the run ended (rc {rc}) before it could be interrupted ---\n".encode())
        return f"failed (rc {rc}, before the interrupt)"
    first.send_signal(signal.SIGINT)
    try:
        first.wait(timeout=min(60.0, max(deadline - time.monotonic(), 1.0)))
    except subprocess.TimeoutExpired:
        kill_group(first)
        log.write(b"\n--- the interrupted run did not stop within 60 s: killed ---\n")
        return "failed (Ctrl-C did not stop the run)"
    log.write(f"\n--- interrupted (rc {first.returncode}); resuming ---\n".encode())
    log.flush()
    if first.returncode != 130:
        return f"failed (Ctrl-C gave rc {first.returncode}, not 130)"
    return call(suite, [*argv, "--resume"], log, deadline, outcome, step)


def read_train(suite: Suite, outcome: Outcome) -> list[str]:
    path = suite.work / "run" / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    outcome.data = {"epochs": records}
    return [f"epoch {r['epoch']}: loss {r['loss']:.3f}, clean {r.get('clean_acc') or 0:.3f}, "
            f"robust {r.get('robust_acc') or 0:.3f}, {r['images_per_s']:.0f} img/s" for r in records]


def run_eval(suite: Suite, outcome: Outcome, step: Step, log, deadline: float) -> str:
    data = "?n=128&size=16" if suite.smoke else "?n=4000"
    argv = cli("eval", str(suite.work / "run"), "--test", f"shapes:primary{data}", "--backend", "eager",
               "--attacks", "clean,pgd5" if suite.smoke else "clean,pgd20,cw20", "--device", suite.device,
               "--n", "32" if suite.smoke else "500", "--out", str(suite.work / "eval.json"))
    return call(suite, argv, log, deadline, outcome, step)


def read_eval(suite: Suite, outcome: Outcome) -> list[str]:
    report = _load(suite.work / "eval.json")
    if report is None:
        return []
    outcome.data = report
    return ([f"clean {report['clean_acc']:.3f}"] +
            [f"{k} {v['robust_acc']:.3f}" for k, v in report.get("attacks", {}).items()])


# other benches ------------------------------------------------------------------------------

def simple(key: str, args: Callable[[Suite], list[str]]) -> Callable:
    def run(suite: Suite, outcome: Outcome, step: Step, log, deadline: float) -> str:
        return call(suite, cli(*args(suite), "--out", str(suite.work / f"{key}.json")), log, deadline, outcome, step)
    return run


def read_rows(fmt: Callable[[dict], str]) -> Callable:
    def read(suite: Suite, outcome: Outcome) -> list[str]:
        report = _load(suite.work / f"{outcome.key}.json")
        if report is None:
            return []
        outcome.data = {"rows": report["rows"]}
        return [fmt(r) for r in report["rows"]]
    return read


def read_bench_eval(suite: Suite, outcome: Outcome) -> list[str]:
    report = _load(suite.work / "bench-eval.json")
    if report is None:
        return []
    outcome.data = report
    rows = [f"clean {r['name']} ({r['precision']}): {r['images_per_s']:.0f} img/s" for r in report["clean"]]
    rows += [f"{r['name']}: {r['images_per_s']:.1f} img/s, 10k images in {10000 / r['images_per_s'] / 60:.1f} min"
             for r in report["attacks"]]
    return rows + [f"skipped {name}: {why.split(':')[0]}" for name, why in report.get("skipped", {}).items()]


def steps() -> list[Step]:
    tiny = ["--compile", "off", "--precision", "fp32", "--kernels", "torch"]
    return [
        Step("env", "environment", 30, 15, run_env, read_env),
        Step("step-eager", "bench step AT, bf16, eager, with baselines", 120, 30,
             bench_step("step-eager", "at", ["--compile", "off", "--precision", "bf16", "--kernels", "triton"], tiny,
                        baselines=True), read_bench_step),
        Step("step-compiled", "bench step AT, bf16, compiled", 240, 30,
             # the rehearsal runs it eager: a CPU compile costs half a minute and rehearses nothing of the suite
             bench_step("step-compiled", "at", ["--compile", "on", "--precision", "bf16", "--kernels", "triton"],
                        tiny, baselines=False),
             read_bench_step),
        Step("tests-kernels", "gpu tests: kernels, images, loaders", 90, 40, pytest_step(early=True), read_pytest),
        Step("train-resume", "train, Ctrl-C, --resume", 150, 60, run_train_resume, read_train),
        Step("eval-run", "eval the trained run (compile off)", 60, 25, run_eval, read_eval, needs=("train-resume",)),
        Step("step-trades", "bench step TRADES, bf16, compiled, with baselines", 300, 30,
             bench_step("step-trades", "trades", ["--compile", "on", "--precision", "bf16", "--kernels", "triton"],
                        tiny, baselines=True), read_bench_step),
        Step("step-fp16", "bench step AT, fp16 + GradScaler (V100 path), eager", 90, 30,
             bench_step("step-fp16", "at", ["--compile", "off", "--precision", "fp16", "--kernels", "triton"], tiny,
                        baselines=False), read_bench_step),
        Step("bench-eval", "bench eval", 180, 30,
             simple("bench-eval", lambda s: ["bench", "eval", "--device", s.device,
                                             "--model", "wrn-10-1" if s.smoke else "wrn-28-10",
                                             "--n", "8" if s.smoke else "256", "--batch-size", "8" if s.smoke else "256",
                                             "--steps", "1" if s.smoke else "10", "--repeats", "1" if s.smoke else "3"]),
             read_bench_eval),
        Step("bench-kernels", "bench kernels", 90, 40,
             simple("bench-kernels", lambda s: ["bench", "kernels", "--device", s.device,
                                                "--repeats", "2" if s.smoke else "20",
                                                *(["--no-compile"] if s.smoke else [])]),
             read_rows(lambda r: f"{r['kernel']} {r['shape']} {r['impl']}: " + (
                 f"WRONG, not timed: {r['error']}" if r.get("error") else
                 f"{r['mean_us']:.1f} us, {r['speedup']:.2f}x torch"))),
        Step("bench-loader", "bench loader (resident)", 60, 25,
             simple("bench-loader", lambda s: ["bench", "loader", "--backends", "resident", "--device", s.device,
                                               "--n", "256" if s.smoke else "10000",
                                               "--repeats", "2" if s.smoke else "3"]),
             read_rows(lambda r: f"{r['backend']}: {r['images_per_s_mean']:.0f} img/s "
                                 f"(+- {r['images_per_s_std']:.0f})")),
        Step("levers-graphs", "bench step AT levers: reduce-overhead, cuDNN autotune", 360, 30,
             bench_step("levers-graphs", "at", ["--compile", "on,reduce-overhead", "--precision", "bf16",
                                                "--kernels", "triton", "--cudnn-benchmark", "off,on"],
                        [*tiny, "--cudnn-benchmark", "off,on"], baselines=False), read_bench_step),
        Step("levers-dynamic", "bench step AT lever: compile with a static batch or a symbolic one", 300, 30,
             bench_step("levers-dynamic", "at", ["--compile", "on", "--compile-dynamic", "false,true",
                                                 "--precision", "bf16", "--kernels", "triton"],
                        # on a CPU each compile costs half a minute: the rehearsal runs the command eager
                        [*tiny, "--compile-dynamic", "false,true"], baselines=False), read_bench_step),
        Step("levers-autotune", "bench step AT lever: compile max-autotune", 540, 30,
             bench_step("levers-autotune", "at", ["--compile", "max-autotune", "--precision", "bf16",
                                                  "--kernels", "triton"], tiny, baselines=False), read_bench_step),
        Step("tests-rest", "the remaining gpu tests", 400, 60, pytest_step(early=False), read_pytest),
    ]


# -- the driver -------------------------------------------------------------------------------

def measured_estimates(path: Path) -> dict[str, float]:
    """Seconds each finished step took in an earlier run's figures.json (ok steps only)."""
    try:
        report = json.loads(path.read_text())
        return {s["key"]: float(s["seconds"]) for s in report["steps"] if s["status"] == "ok"}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"error: --estimates {path}: not a figures.json of this suite ({err})") from None


def pack() -> None:
    """Copies what a bare GPU machine lacks into build/pydeps, and the revision (it has no .git)."""
    PYDEPS.mkdir(parents=True, exist_ok=True)
    for name in PACKED:
        try:
            module = __import__(name)
        except ImportError:
            raise SystemExit(f"error: --pack needs {name} installed here: bash scripts/setup.sh") from None
        source = Path(module.__file__)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, PYDEPS / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*PACK_SKIP))
        else:
            shutil.copy2(source, PYDEPS / source.name)
        # The dist-info travels too: pytest finds plugins (pytest-timeout) by its entry points.
        for dist in importlib.metadata.packages_distributions().get(name, []):
            info = Path(importlib.metadata.distribution(dist)._path)
            shutil.copytree(info, PYDEPS / info.name, dirs_exist_ok=True)
        print(f"packed {name} from {source.parent}")
    from benchmarks.common import git_revision

    revision = git_revision()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    REVISION_FILE.write_text(revision + ("+uncommitted" if dirty else "") + "\n")
    size = sum(p.stat().st_size for p in PYDEPS.rglob("*") if p.is_file())
    print(f"revision {REVISION_FILE.read_text().strip()}; {PYDEPS} holds {size / 2**20:.1f} MiB: carry build/pydeps")


def parse(argv: list[str] | None) -> argparse.Namespace:
    keys = [s.key for s in steps()]
    parser = argparse.ArgumentParser(
        description="Every GPU check and figure in one command, within a GPU visit's limits.",
        epilog="steps, in order: " + ", ".join(keys),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for the whole suite; a step that cannot finish in what is left is skipped")
    parser.add_argument("--only", default=None, help="comma-separated step keys to run (in the suite's order)")
    parser.add_argument("--estimates", type=Path, default=None,
                        help="an earlier run's figures.json: its measured step seconds replace the stated estimates")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "gpu-suite",
                        help="scratch folder for logs, JSON and the trained run (default build/gpu-suite)")
    parser.add_argument("--smoke", action="store_true", help="rehearse every step on the CPU with tiny sizes")
    parser.add_argument("--stall", default=None, metavar="STEP",
                        help="rehearsal only: make this bench-step step run until it is killed from outside")
    parser.add_argument("--pack", action="store_true", help="fill build/pydeps for a bare GPU machine and stop")
    args = parser.parse_args(argv)
    if args.only:
        unknown = [k for k in args.only.split(",") if k not in keys]
        if unknown:
            parser.error(f"--only: unknown step {', '.join(unknown)}; steps are {', '.join(keys)}")
    if args.stall and not args.smoke:
        parser.error("--stall is for the --smoke rehearsal only")
    if not args.budget > 0:
        parser.error("--budget must be a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.pack:
        sys.path[:0] = [str(REPO)]
        pack()
        return 0
    began = time.monotonic()
    out = Path(os.environ.get("OUT") or REPO / "build" / "gpu-suite-out").resolve()
    work = args.work.resolve()
    if work == out or out in work.parents:
        raise SystemExit("error: --work must be outside $OUT: only the result files go there")
    out.mkdir(parents=True, exist_ok=True)
    if work.exists() and any(work.iterdir()):
        if not (work / WORK_MARKER).is_file():
            raise SystemExit(f"error: --work {work} holds files this suite did not write: give an empty or new "
                             "folder (the suite clears its scratch folder at start)")
        shutil.rmtree(work)  # the scratch of an earlier run; its results are in its own $OUT
    (work / "logs").mkdir(parents=True)
    (work / WORK_MARKER).write_text("scratch of scripts/gpu_suite.py: removed by its next run\n")
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
            return 2
    estimates = measured_estimates(args.estimates) if args.estimates else {}
    chosen = [s for s in steps() if not args.only or s.key in args.only.split(",")]
    outcomes = [Outcome(s.key, s.name, estimate=estimates.get(s.key, s.smoke_estimate_s if args.smoke
                                                               else s.estimate_s)) for s in chosen]
    suite = Suite(work=work, out=out, smoke=args.smoke, outcomes=outcomes, stall=args.stall,
                  env={"git_revision": revision(), "packages": _versions()})
    suite.publish()
    for number, step in enumerate(chosen, 1):
        outcome = suite.outcome(step.key)
        left = args.budget - (time.monotonic() - began)
        missing = [n for n in step.needs if n not in [o.key for o in suite.outcomes if o.status == "ok"]]
        if missing:
            outcome.status = f"skipped (needs {', '.join(missing)})"
        elif outcome.estimate > left:
            outcome.status = f"skipped (needs ~{outcome.estimate:.0f} s, {max(left, 0):.0f} s left)"
        if outcome.status.startswith("skipped"):
            print(f"[{step.key}] {outcome.status}", flush=True)
            suite.publish()
            continue
        outcome.status, outcome.log = "running", f"logs/{number:02d}-{step.key}.log"
        suite.publish()
        print(f"[{step.key}] running (estimate {outcome.estimate:.0f} s, {left:.0f} s left) ...", flush=True)
        started = time.monotonic()
        # A step may overrun its estimate (a slow compile is still a figure) but never the budget.
        deadline = started + min(left, max(2 * outcome.estimate, outcome.estimate + 60))
        with (work / outcome.log).open("wb") as log:
            try:
                status = step.run(suite, outcome, step, log, deadline)
            except (OSError, subprocess.SubprocessError) as err:
                status = f"failed ({type(err).__name__}: {err})"
        outcome.seconds = time.monotonic() - started
        try:
            outcome.figures = step.read(suite, outcome)
        except (ValueError, KeyError, TypeError) as err:  # a figure that cannot be read is itself a finding
            outcome.figures = [f"figures unreadable: {type(err).__name__}: {err}"]
        outcome.status = status
        print(f"[{step.key}] {status} in {outcome.seconds:.0f} s", flush=True)
        suite.publish()
    failed = [o.key for o in suite.outcomes if o.status not in ("ok",) and not o.status.startswith("skipped")]
    print(f"summary: {out / 'summary.md'}" + (f"; not ok: {', '.join(failed)}" if failed else "; every step ran ok"))
    return 1 if failed else 0


VERSIONS = """
import importlib, json, sys
found = {"python": sys.version.split()[0]}
for name in ("torch", "triton", "numba", "numpy", "safetensors", "tomli_w", "pyautoattack", "pytest_timeout"):
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception:  # absent or broken: either way not usable here
        found[name] = None
print(json.dumps(found))
"""


def _versions() -> dict:
    # In a child: an import that hangs or crashes (a broken CUDA library) must not take the suite.
    paths = os.pathsep.join([str(REPO), str(PYDEPS), os.environ.get("PYTHONPATH", "")])
    try:
        done = subprocess.run([sys.executable, "-c", VERSIONS], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": paths})
        return json.loads(done.stdout)
    except (subprocess.SubprocessError, ValueError) as err:
        return {"error": f"{type(err).__name__}: {err}"}


if __name__ == "__main__":
    sys.exit(main())
