"""The GPU suite's rehearsal (scripts/gpu-suite.sh --smoke): every step on the CPU with tiny
sizes, under a GPU visit's rules. A visit is short and brings back at most 8 files, so the suite
must respect its budget, keep $OUT within the limits at every moment, and leave every finished
figure behind when the machine's time limit kills it in the middle of a step."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-suite.sh"
STEPS = ["env", "step-eager", "step-compiled", "tests-kernels", "train-resume", "eval-run", "step-trades",
         "step-fp16", "bench-eval", "bench-kernels", "bench-loader", "levers-graphs", "levers-dynamic", "levers-autotune",
         "tests-rest"]


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "scripts" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _env(out: Path) -> dict:
    return {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def _ignore_sigint() -> None:
    # As nohup, CI runners and background jobs start processes: SIGINT ignored, inherited by children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _assert_within_visit_limits(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)


def _processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if str(path) in cmdline and "zombie" not in state:
            found.append(cmdline)
    return found


def _figures(out: Path) -> dict:
    return {s["key"]: s for s in json.loads((out / "figures.json").read_text())["steps"]}


def test_a_run_killed_mid_step_keeps_every_finished_figure_and_shows_where_it_stopped(tmp_path):
    """The whole suite is SIGKILLed (as a visit's time limit does) while a bench step is timing:
    every earlier step's figures and the running step's finished rows are in $OUT, the running
    step says `running`, and $OUT never broke the limits. The suite runs with SIGINT ignored, as
    under nohup or CI, and its Ctrl-C step must still interrupt the training run."""
    out, work = tmp_path / "out", tmp_path / "work"
    suite = subprocess.Popen(["bash", str(SCRIPT), "--smoke", "--work", str(work), "--stall", "levers-autotune"],
                             env=_env(out), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True, preexec_fn=_ignore_sigint)
    deadline = time.monotonic() + 540
    try:
        while time.monotonic() < deadline and suite.poll() is None:
            time.sleep(0.5)
            try:
                stalled = _figures(out).get("levers-autotune", {})
            except (OSError, ValueError):
                continue  # not written yet
            if stalled.get("status") == "running" and stalled.get("data", {}).get("rows"):
                break
            _assert_within_visit_limits(out) if out.exists() else None
        assert suite.poll() is None, suite.stdout.read().decode()[-3000:]
    finally:
        os.killpg(suite.pid, signal.SIGKILL)
        suite.wait()
    # The running step dies with the suite: on a lent machine it would hold the GPU afterwards.
    deadline = time.monotonic() + 10
    while _processes_naming(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_naming(work), _processes_naming(work)
    _assert_within_visit_limits(out)
    assert sorted(p.name for p in out.iterdir()) == ["figures.json", "results.tar.gz", "summary.md"]

    figures = _figures(out)
    assert list(figures) == STEPS
    before = STEPS[:STEPS.index("levers-autotune")]
    assert all(figures[k]["status"] == "ok" for k in before), {k: figures[k]["status"] for k in before}
    assert figures["levers-autotune"]["status"] == "running" and figures["tests-rest"]["status"] == "pending"
    # Every finished step left its figures: bench rows, the trained run's epochs, test counts.
    for key in ("step-eager", "step-compiled", "step-trades", "step-fp16", "levers-graphs", "levers-dynamic"):
        assert any("img/s" in line for line in figures[key]["figures"]), figures[key]
    assert len(figures["levers-dynamic"]["data"]["rows"]) == 2
    assert {r["impl"] for r in figures["step-eager"]["data"]["rows"]} == {"engine", "reference", "naive"}
    assert {r["impl"] for r in figures["step-compiled"]["data"]["rows"]} == {"engine"}  # baselines timed once
    assert figures["step-compiled"]["data"]["warmup"][0]["first_step_seconds"] > 0  # a compile's time, on a GPU
    assert len(figures["train-resume"]["data"]["epochs"]) == 3
    assert any(line.startswith("clean ") for line in figures["eval-run"]["figures"])
    assert figures["tests-kernels"]["figures"][0].endswith("skipped")  # CUDA tests on a CPU
    # The stalled step's rounds so far are there, marked partial.
    stalled = figures["levers-autotune"]["data"]
    assert stalled["complete"] is False and stalled["rows"][0]["rounds"] >= 1

    summary = (out / "summary.md").read_text()
    assert "| levers-autotune: " in summary and "| running |" in summary and "revision `" in summary
    assert "Step `levers-autotune` is running" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/05-train-resume.log" in names and "step-eager.json" in names
    assert not [n for n in names if n.endswith((".pt", ".safetensors", ".beton"))]
    train_log = (work / "logs" / "05-train-resume.log").read_text()
    assert "interrupted (rc 130); resuming" in train_log, train_log[-2000:]


def test_the_budget_stops_a_step_in_its_middle_and_skips_what_cannot_fit(tmp_path):
    """A step that runs past what is left of the budget is stopped (status timeout) with the rows
    it finished kept; a step whose estimate does not fit is skipped, and so is one that needs it."""
    out, work = tmp_path / "out", tmp_path / "work"
    # An earlier visit measured env at 1 s and step-eager at 5 s: on a loaded machine the suite's own
    # start-up eats into the budget, and env must still fit (its stated estimate is larger).
    earlier = tmp_path / "earlier-figures.json"
    earlier.write_text(json.dumps({"steps": [{"key": "env", "status": "ok", "seconds": 1},
                                             {"key": "step-eager", "status": "ok", "seconds": 5}]}))
    start = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--work", str(work), "--budget", "30",
                           "--estimates", str(earlier), "--stall", "step-eager",
                           "--only", "env,step-eager,train-resume,eval-run"],
                          env=_env(out), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr  # a step timed out
    figures = _figures(out)
    assert list(figures) == ["env", "step-eager", "train-resume", "eval-run"]
    assert figures["env"]["status"] == "ok" and figures["step-eager"]["estimate"] == 5
    assert figures["step-eager"]["status"] == "timeout"
    assert figures["step-eager"]["data"]["rows"], "the rounds timed before the stop are kept"
    assert figures["train-resume"]["status"].startswith("skipped (needs ~60 s")
    assert figures["eval-run"]["status"] == "skipped (needs train-resume)"
    assert elapsed < 30 + 25  # the budget, plus interpreter start-up and the last publish
    _assert_within_visit_limits(out)


def test_help_names_the_steps_bad_options_are_usage_errors_and_a_users_folder_is_kept(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--help"], env=_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0 and "steps, in order: " + ", ".join(STEPS) in done.stdout
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--only", "env,warp"], env=_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown step warp" in done.stderr
    done = subprocess.run(["bash", str(SCRIPT), "--stall", "step-eager"], env=_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--smoke rehearsal only" in done.stderr
    users = tmp_path / "users"  # a folder of someone else's files is never the suite's scratch
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--only", "env", "--work", str(users)],
                          env=_env(tmp_path / "out"), capture_output=True, text=True)
    assert done.returncode == 1 and "holds files this suite did not write" in done.stderr
    assert (users / "notes.txt").read_text() == "mine"


def test_pack_carries_the_pure_python_extras_and_the_revision(tmp_path, monkeypatch):
    suite = _suite_module()
    monkeypatch.setattr(suite, "PYDEPS", tmp_path / "pydeps")
    monkeypatch.setattr(suite, "REVISION_FILE", tmp_path / "pydeps" / "REVISION")
    suite.pack()
    packed = tmp_path / "pydeps"
    assert (packed / "tomli_w" / "__init__.py").exists() and (packed / "pytest_timeout.py").exists()
    assert list(packed.glob("pytest_timeout-*.dist-info/entry_points.txt"))  # how pytest finds the plugin
    assert (packed / "pyautoattack" / "autoattack.py").exists()
    assert not (packed / "pyautoattack" / "examples").exists()  # 44 MB of weights stay behind
    assert sum(p.stat().st_size for p in packed.rglob("*") if p.is_file()) < 8 * 2**20
    revision = (packed / "REVISION").read_text().strip()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert revision.split("+")[0] == (git.stdout.strip() or "unknown")
    # The suite's processes report that revision where no .git exists.
    monkeypatch.delenv("BIAMAT_REVISION", raising=False)
    assert suite.revision() == revision


def test_the_tarball_cuts_logs_to_their_tails_when_the_whole_would_not_come_back(tmp_path, monkeypatch):
    suite = _suite_module()
    monkeypatch.setattr(suite, "TARBALL_MAX_BYTES", 64 * 2**10)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "01-big.log").write_bytes(os.urandom(256 * 2**10))  # does not compress
    (tmp_path / "step.json").write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"weights")
    data = suite.tarball(tmp_path)
    assert len(data) <= 64 * 2**10
    path = tmp_path / "r.tar.gz"
    path.write_bytes(data)
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["logs/01-big.log", "step.json"]
        assert tar.extractfile("logs/01-big.log").read().startswith(b"[... cut")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_full_suite_refuses_a_machine_without_cuda(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path / "work")], env=_env(tmp_path / "out"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--smoke" in done.stderr
