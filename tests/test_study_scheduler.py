"""`study --executor local|slurm` (studies/scheduler.py): runs as submitit jobs in waves after
the runs they need, each in a process of its own with its log, a failed run named without
stopping the others; one GPU per local job; Slurm through a fake `sbatch` on PATH."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from engine.config import parse_overrides
from studies import scheduler
from studies.grids import Derived, Grid, Row
from studies.plan import get_scale, make_plan
from studies.runner import run_study
from studies.scheduler import Resources, run_local, slot_environment, waves
from tests.fixtures_slurm import fake_slurm  # noqa: F401 (a fixture)
from tests.fixtures_study import tiny  # noqa: F401 (a fixture)

pytest.importorskip("submitit")

CHAIN = Grid(name="chain", title="t", about="a", columns=("step",),
             rows=(Row("pre", ("pre-train",), helper=True),
                   Row("fine", ("fine-tune",), settings=("init.source={run:pre}", "init.heads=new")),
                   Row("alone", ("alone",), settings=("optim.lr=0.05",))))


def test_a_run_waits_for_the_run_it_names_and_a_repeated_run_stands_for_its_original(tmp_path):
    # `same` repeats `pre`'s config, and `after` names `same`: it waits for `pre`, which trains for both.
    grid = Grid(name="g", title="t", about="a", columns=("c",),
                rows=(Row("pre", ("p",)), Row("same", ("p",)), Row("after", ("a",), settings=("data.test={run:same}",))))
    plan = make_plan(grid, get_scale("demo"), tmp_path, seeds=(0,))
    assert [r.same_as for r in plan.runs] == [None, "pre-s0", None]
    assert plan.runs[2].needs == ("same-s0",)
    assert [[r.name for r in wave] for wave in waves(plan.runs)] == [["pre-s0"], ["after-s0"]]


def test_runs_in_processes_train_after_what_they_need_and_a_failure_is_named_with_its_log(tiny, tmp_path):
    plan = make_plan(CHAIN, tiny, tmp_path)
    assert [[r.name for r in wave] for wave in waves(plan.runs)] == [["pre-s0", "alone-s0"], ["fine-s0"]]
    # `alone` reads a file that is not there: it fails in its own process, the chain still trains.
    alone = next(r for r in plan.runs if r.row.name == "alone")
    broken = dataclasses.replace(alone, config=dataclasses.replace(
        alone.config, data=dataclasses.replace(alone.config.data, primary=str(tmp_path / "gone.beton"))))
    plan.runs[plan.runs.index(alone)] = broken
    events = []
    failed = run_local(plan, Resources(jobs=2), on_start=lambda run, log, env: events.append(("start", run.name)),
                              on_done=lambda run, ok: events.append(("done", run.name, ok)))
    assert failed == ["alone-s0"]
    assert events.index(("done", "pre-s0", True)) < events.index(("start", "fine-s0"))
    assert ("done", "fine-s0", True) in events
    for name in ("pre-s0", "fine-s0"):
        assert json.loads((tmp_path / name / "eval.json").read_text())["complete"]
        assert f"{name}: trained" in (tmp_path / "logs" / f"{name}.log").read_text()
    log = (tmp_path / "logs" / "alone-s0.log").read_text()
    assert "alone-s0 failed" in log and "gone.beton" in log
    assert not (tmp_path / "alone-s0" / "eval.json").exists()


def test_study_jobs_2_trains_side_by_side_and_writes_the_table_once(tiny, tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    out = tmp_path / "amp"
    args = ["study", "amplification", "--scale", "tiny", "--out", str(out), "--only", "at,at-biamat", "--jobs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "started at-s0" in result.stderr and "finished at-biamat-s0" in result.stderr
    assert {p.name for p in (out / "logs").glob("*.log")} == {"at-s0.log", "at-biamat-s0.log"}
    md = (out / "study.md").read_text()
    for name, row in (("at-s0", "| AT | - |"), ("at-biamat-s0", "| AT+BiaMAT | selected by confidence |")):
        report = json.loads((out / name / "eval.json").read_text())
        line = next(line for line in md.splitlines() if line.startswith(row))
        assert f"| {100 * report['clean_acc']:.2f} |" in line
    log = (out / "logs" / "at-s0.log").read_text()
    again = CliRunner().invoke(app, args)  # both finished: no job starts, the table is written again
    assert again.exit_code == 0 and "started" not in again.stderr and "study.md" in again.stdout
    assert (out / "logs" / "at-s0.log").read_text() == log


# A {run:ROW} dependency (fine after pre) and a data step (part's primary data, made in its job).
WITH_DATA = Grid(name="chain", title="t", about="a", columns=("step",),
                 rows=(Row("pre", ("pre-train",), helper=True),
                       Row("fine", ("fine-tune",), settings=("init.source={run:pre}", "init.heads=new")),
                       Row("part", ("part",), derived=Derived("cifar-A.beton", demo_options=(("parts", "12,12"), ("use", "A"))))))
TIMING = ("seconds", "images_per_s", "eval_seconds", "clean_seconds", "model", "date", "host", "device_name")


def _results(run_dir):
    """What a run computed, without its timings and paths."""
    def strip(record):
        if isinstance(record, dict):
            return {k: strip(v) for k, v in record.items() if k not in TIMING and "seconds" not in k}
        return record
    metrics = [strip(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    report = strip(json.loads((run_dir / "eval.json").read_text()))
    return metrics, {k: report[k] for k in ("clean_acc", "robust_acc", "attacks", "complete")}


def test_local_jobs_2_with_a_dependency_and_a_data_step_equal_the_sequential_run(tiny, tmp_path):
    one, two = (make_plan(WITH_DATA, tiny, tmp_path / name) for name in ("one", "two"))
    assert [s.command for s in two.runs[2].data_steps] == ["prepare"] and two.runs[1].needs == ("pre-s0",)
    run_study(one)  # in this process, one run after the other
    events = []
    failed = run_local(two, Resources(jobs=2, gpus=()), cores=2,  # one thread per job, as here
                       on_start=lambda run, log, env: events.append(("start", run.name)),
                       on_done=lambda run, ok: events.append(("done", run.name, ok)))
    assert failed == []
    assert events.index(("done", "pre-s0", True)) < events.index(("start", "fine-s0"))
    assert two.runs[2].data_steps[0].out.is_file()
    for run in ("pre-s0", "fine-s0", "part-s0"):
        assert _results(tmp_path / "two" / run) == _results(tmp_path / "one" / run), run


def _wait_for_an_epoch(metrics) -> None:
    """Until the run has saved its first epoch's checkpoint (written last, replaced whole)."""
    deadline = time.monotonic() + 120
    while not (metrics.parent / "last.pt").is_file():
        assert time.monotonic() < deadline, f"{metrics.parent} never saved an epoch"
        time.sleep(0.02)


def _pids_with(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry))
    return pids


def test_a_local_job_killed_mid_run_resumes_on_the_next_call(tiny, tmp_path):
    plan = make_plan(CHAIN, tiny, tmp_path, only=("alone",), extra=parse_overrides(["optim.epochs=20"]))
    metrics = tmp_path / "alone-s0" / "metrics.jsonl"

    def kill_once_an_epoch_is_saved():
        _wait_for_an_epoch(metrics)
        for pid in _pids_with(str(tmp_path / "logs" / "submitit")):
            os.kill(pid, signal.SIGKILL)  # the job's controller and its task: as the OOM killer would

    killer = threading.Thread(target=kill_once_an_epoch_is_saved)
    killer.start()
    failed = run_local(plan, Resources(jobs=2, gpus=()))
    killer.join()
    assert failed == ["alone-s0"]
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < 20 and not (tmp_path / "alone-s0" / "eval.json").exists()
    assert dict(scheduler.run_states(plan))["alone-s0"] == "interrupted (resumes from its checkpoint)"
    assert run_local(plan, Resources(jobs=2, gpus=())) == []
    log = (tmp_path / "logs" / "alone-s0.log").read_text()
    assert "alone-s0: resumed at epoch" in log
    assert json.loads((tmp_path / "alone-s0" / "eval.json").read_text())["complete"]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == list(range(1, 21))
    assert dict(scheduler.run_states(plan))["alone-s0"] == "finished"


def test_each_local_job_gets_its_own_gpus_round_robin_and_a_share_of_the_cores():
    eight = tuple(range(8))
    pinned = [slot_environment(slot, 8, eight, 1, 64)["CUDA_VISIBLE_DEVICES"] for slot in range(8)]
    assert pinned == [str(g) for g in range(8)]
    pairs = [slot_environment(slot, 4, eight, 2, 64)["CUDA_VISIBLE_DEVICES"] for slot in range(4)]
    assert pairs == ["0,1", "2,3", "4,5", "6,7"]
    assert [slot_environment(s, 3, (4, 6), 1, 12)["CUDA_VISIBLE_DEVICES"] for s in range(3)] == ["4", "6", "4"]
    assert slot_environment(0, 2, (), 1, 16) == {"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": ""}
    assert slot_environment(0, 4, (), 1, 2)["OMP_NUM_THREADS"] == "1"  # never 0
    assert scheduler.torchrun_command(Path("r.pkl"), 2)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "studies.job", "r.pkl"]


def test_jobs_on_a_gpu_machine_receive_one_gpu_each(tiny, tmp_path, monkeypatch):
    # Four GPUs faked: the two runs of a wave go to two jobs, which see GPU 0 and GPU 1.
    monkeypatch.setattr(scheduler, "visible_gpus", lambda: (0, 1, 2, 3))
    plan = make_plan(CHAIN, tiny, tmp_path, only=("pre", "alone"))
    envs = {}
    assert run_local(plan, Resources(jobs=2), on_start=lambda run, log, env: envs.update({run.name: env})) == []
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for env in envs.values()) == ["0", "1"]
    for name, env in envs.items():  # what the job's own process saw
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert f"job started (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}," in log


def test_slurm_submits_one_array_per_wave_with_its_resources_after_the_waves_before_and_a_requeue_resumes(
        tiny, tmp_path, fake_slurm):
    from typer.testing import CliRunner

    from cli.app import app

    out = tmp_path / "study"
    base = ["study", "amplification", "--scale", "tiny", "--out", str(out), "--only", "at,at-biamat",
            "--set", "optim.epochs=20"]
    slurm = ["--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "2:00:00", "--slurm-account", "acct",
             "--slurm-constraint", "a100", "--slurm-array-parallelism", "1", "--slurm-extra", "qos=high"]
    result = CliRunner().invoke(app, base + slurm)
    assert result.exit_code == 0, result.output
    ids = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(ids) == ["at-biamat-s0", "at-s0"] and "submitted at-s0: slurm job" in result.stdout
    assert not (out / "study.md").exists()  # written by the call after the jobs
    [(job_id, job)] = fake_slurm.state["jobs"].items()
    options = job["options"]
    assert {k: options[k] for k in ("partition", "time", "account", "constraint", "qos", "gpus-per-node",
                                    "ntasks-per-node", "nodes", "array")} == {
        "partition": "gpu", "time": "120", "account": "acct", "constraint": "a100", "qos": "high",
        "gpus-per-node": "1", "ntasks-per-node": "1", "nodes": "1", "array": "0-1%1"}
    assert options["output"].startswith(str(out / "slurm")) and "dependency" not in options
    assert "--requeue" not in job["script"] and "submitit.core._submit" in job["script"]

    status = CliRunner().invoke(app, base + ["--status"])
    assert status.exit_code == 0 and f"at-s0: pending (slurm job {ids['at-s0']})" in status.stdout
    twice = CliRunner().invoke(app, base + slurm)  # queued runs are not submitted a second time
    assert twice.exit_code == 1 and "still queued or running on Slurm" in twice.output
    assert len(fake_slurm.state["jobs"]) == 1 and json.loads((out / "slurm" / "jobs.json").read_text()) == ids

    assert fake_slurm.run_task(ids["at-s0"]) == 0
    # at-biamat-s0 is preempted after its first epochs: submitit requeues it, and it goes on from last.pt.
    metrics = out / "at-biamat-s0" / "metrics.jsonl"
    task = fake_slurm.start_task(ids["at-biamat-s0"])
    pid = fake_slurm.task_pid()
    _wait_for_an_epoch(metrics)
    os.kill(pid, signal.SIGUSR2)  # what Slurm sends before preempting or at the time limit (--signal=USR2@90)
    fake_slurm.finish(ids["at-biamat-s0"], task)
    assert fake_slurm.state["jobs"][job_id]["requeued"] == [ids["at-biamat-s0"]]
    assert 1 <= len(metrics.read_text().splitlines()) < 20
    status = CliRunner().invoke(app, base + ["--status"])
    assert "at-s0: finished" in status.stdout and "at-biamat-s0: pending" in status.stdout
    assert fake_slurm.run_task(ids["at-biamat-s0"]) == 0
    assert "at-biamat-s0: resumed at epoch" in (out / "logs" / "at-biamat-s0.log").read_text()
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == list(range(1, 21))

    again = CliRunner().invoke(app, base + slurm)  # all finished: nothing submitted, the table written
    assert again.exit_code == 0 and "nothing to submit" in again.stdout and (out / "study.md").is_file()
    assert len(fake_slurm.state["jobs"]) == 1


def test_slurm_waves_wait_for_the_arrays_before_them(tiny, tmp_path, fake_slurm):
    plan = make_plan(CHAIN, tiny, tmp_path)
    ids = scheduler.submit_slurm(plan, Resources(executor="slurm", gpus_per_run=2, time_min=30))
    first, second = fake_slurm.state["jobs"].values()
    assert second["options"]["dependency"] == f"afterok:{ids['pre-s0'].split('_')[0]}"
    assert ids["fine-s0"].split("_")[0] != ids["pre-s0"].split("_")[0]
    assert first["options"]["gpus-per-node"] == "2" and first["options"]["time"] == "30"
    with pytest.raises(AssertionError, match="before its dependency"):
        fake_slurm.start_task(ids["fine-s0"])
    states = dict(scheduler.run_states(plan))
    assert states["fine-s0"].startswith("pending") and states["alone-s0"].startswith("pending")
    fake_slurm.set_state(ids["alone-s0"], "FAILED")
    (tmp_path / "logs" / "alone-s0.log").write_text("x\nValueError: data.primary: gone.beton is missing\n")
    assert dict(scheduler.run_states(plan))["alone-s0"] == (
        "failed (slurm FAILED): ValueError: data.primary: gone.beton is missing")


@pytest.mark.parametrize("flags, message", [
    (["--executor", "pbs"], "--executor 'pbs': expected one of local, slurm"),
    (["--slurm-partition", "gpu"], "--slurm-partition only apply to --executor slurm"),
    (["--executor", "slurm", "--jobs", "4"], "--jobs and --gpus are for --executor local"),
    (["--executor", "slurm", "--slurm-time", "soon"], "--slurm-time 'soon': expected minutes or [D-]HH:MM:SS"),
    (["--executor", "slurm", "--slurm-extra", "qos"], "--slurm-extra 'qos': expected KEY=VALUE"),
    (["--gpus", "0,x"], "--gpus '0,x': expected comma-separated GPU indices"),
    (["--gpus", "0", "--gpus-per-run", "2"], "lists fewer GPUs than --gpus-per-run 2"),
])
def test_scheduler_option_mistakes_are_usage_errors_that_write_nothing(tmp_path, flags, message):
    from typer.testing import CliRunner

    from cli.app import app

    result = CliRunner().invoke(app, ["study", "table2", "--scale", "paper", "--out", str(tmp_path / "t2"), *flags])
    assert result.exit_code == 2 and message in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "t2").exists()


def test_without_submitit_a_jobs_study_says_how_to_install_it(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setitem(__import__("sys").modules, "submitit", None)  # as if not installed
    result = CliRunner().invoke(app, ["study", "amplification", "--scale", "tiny", "--out", str(tmp_path / "a"),
                                      "--only", "at", "--jobs", "2"])
    assert result.exit_code == 1 and "pip install 'biamat-engine[study]'" in result.output
    assert not (tmp_path / "a" / "at-s0").exists()


def test_the_dry_run_shows_each_job_and_says_when_no_gpu_throughput_was_measured(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    result = CliRunner().invoke(app, ["study", "table2", "--scale", "paper", "--out", str(tmp_path / "t2"),
                                      "--only", "cifar10-at", "--dry-run", "--executor", "slurm",
                                      "--slurm-partition", "gpu", "--slurm-time", "1-00:00:00", "--gpus-per-run", "2"])
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.output
    assert "job: slurm array task (1 node, 1 task, 2 GPU(s), partition=gpu, time=1440 min)" in text
    assert ("no GPU-hours estimate: docs/benchmarks.md has no measured training step for AT wrn-28-10 on cuda"
            in text)
    assert not (tmp_path / "t2").exists()


def test_the_estimate_divides_a_runs_images_by_the_measured_engine_step_of_its_device_and_model():
    from studies.estimate import estimate, measured_steps

    doc = """## Training step

```
biamat-engine bench step --method at --model wrn-28-10 --batch 128 \\
    --device cuda --out x.json
```

| method | step | images/s | std | vs reference | vs naive |
|---|---|---:|---:|---:|---:|
| AT | engine (bf16, compile on) | 2,000.0 | 10 | 3.0x | 4.0x |
| AT | engine (fp32, compile off) | 1,000.0 | 10 | 1.5x | 2.0x |
| AT | reference (fp32, eager, NCHW) | 600.0 | 10 | 1.00x | 1.3x |

## Evaluation

| AT | engine | 9999 | 1 |
"""
    assert [(m.device, m.model, m.method, m.images_per_s) for m in measured_steps(doc)] == [
        ("cuda", "wrn-28-10", "AT", 2000.0), ("cuda", "wrn-28-10", "AT", 1000.0)]
    assert estimate(7_200_000, "cuda", "WRN-28-10", "at", doc).startswith("~1.0 GPU hours of training at 2,000.0")
    assert estimate(7_200_000, "cuda", "wrn-34-10", "at", doc).startswith("no GPU-hours estimate")
    assert estimate(7_200_000, "cpu", "wrn-28-10", "at", doc).startswith("no CPU-hours estimate")
    assert estimate(None, "cuda", "wrn-28-10", "at", doc).endswith("its image count is unknown")


@pytest.mark.slow
def test_gpus_per_run_2_trains_and_evaluates_the_run_under_torchrun_in_its_job(tiny, tmp_path):
    # On the CPU torchrun's two processes join over gloo, as they would over NCCL on two GPUs.
    plan = make_plan(CHAIN, tiny, tmp_path, only=("alone",))
    assert run_local(plan, Resources(jobs=1, gpus=(), gpus_per_run=2)) == []
    log = (tmp_path / "logs" / "alone-s0.log").read_text()
    assert "alone-s0: brought to finished under torchrun, 2 processes" in log
    assert json.loads((tmp_path / "alone-s0" / "eval.json").read_text())["complete"]
    assert dict(scheduler.run_states(plan))["alone-s0"] == "finished"
