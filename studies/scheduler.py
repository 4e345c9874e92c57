"""A study's runs as scheduler jobs (`study --executor local|slurm`), through submitit.

Each run is one job: `RunJob`, which brings the run to finished with `runner.execute` in a
process of its own (the engine seeds torch's global random state per run and torch's thread
pool is per process, so two runs cannot share one), its output in OUT/logs/RUN.log. The plan
already knows what each run needs (`RunPlan.needs`), so the runs go in waves: a wave starts
once every run of the waves before it has ended. Finished runs are not submitted; an
interrupted one resumes from its last.pt inside its job, exactly as in one process.

local: submitit's LocalExecutor fits. It starts each job as a fresh interpreter that unpickles
the callable (a RunPlan pickles: the runs already went to spawned processes before), gives it
CUDA_VISIBLE_DEVICES from `visible_gpus` and runs shell `setup` lines first, and a timed-out
job is checkpointed and requeued like a Slurm one. What it lacks is a limit on jobs at once and
GPU round robin (it always hands out the first GPUs of `visible_gpus`), so `run_local` keeps
`jobs` slots, each pinned to its own GPUs (`slot_environment`), and submits a run to a free slot
with that slot's GPUs as `visible_gpus`.

slurm: one array per wave (one array task per run, `--array-parallelism` at once), each array
after the arrays before it (`afterok`); a preempted or timed-out task is requeued by submitit
(`RunJob.checkpoint`) and continues from the run's last.pt. The study process submits and
returns; the job ids go to OUT/slurm/jobs.json for `study --status`.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kernels.errors import InputError
from loaders.options import available_cores
from studies.plan import RunPlan, StudyPlan

EXECUTORS = ("local", "slurm")
LOCAL_TIMEOUT_MIN = 60 * 24 * 365
"""submitit's LocalExecutor kills a job after `timeout_min` (2 by default): a run has no limit here."""


def waves(runs: list[RunPlan]) -> list[list[RunPlan]]:
    """The runs that train (not those repeating another's config), grouped so that each comes in
    a later group than every run it needs; a needed run repeating another stands for that one."""
    trained_as = {run.name: run.same_as or run.name for run in runs}
    groups: list[list[RunPlan]] = []
    level: dict[str, int] = {}
    for run in (r for r in runs if r.same_as is None):  # the plan lists a run after the runs it needs
        needed = [level[trained_as[name]] for name in run.needs if trained_as.get(name) in level]
        level[run.name] = 1 + max(needed, default=-1)
        while len(groups) <= level[run.name]:
            groups.append([])
        groups[level[run.name]].append(run)
    return groups


@dataclass(frozen=True)
class Resources:
    """What each job of a study asks for; the CLI's scheduler options."""

    executor: str = "local"
    jobs: int = 1
    """local: jobs at once."""
    gpus: tuple[int, ...] | None = None
    """local: the GPUs handed out to the jobs (None: every visible one; () on a CPU machine)."""
    gpus_per_run: int = 1
    """GPUs of one run; more than one trains it under torchrun inside its job."""
    partition: str | None = None
    time_min: int | None = None
    account: str | None = None
    constraint: str | None = None
    array_parallelism: int = 256
    extra: dict[str, str] = field(default_factory=dict)
    """Further sbatch options, KEY=VALUE as on sbatch's command line without the dashes."""

    def describe(self, slot_env: dict[str, str] | None = None) -> str:
        """The job as the dry run prints it."""
        if self.executor == "local":
            where = ", ".join(f"{k}={v}" for k, v in (slot_env or {}).items() if v)
            torchrun = f", torchrun over {self.gpus_per_run} GPUs" if self.gpus_per_run > 1 else ""
            return f"local job ({where}{torchrun})"
        sbatch = {"partition": self.partition, "time": self.time_min and f"{self.time_min} min",
                  "account": self.account, "constraint": self.constraint, **self.extra}
        return ("slurm array task (1 node, 1 task, " + f"{self.gpus_per_run} GPU(s)"
                + "".join(f", {k}={v}" for k, v in sbatch.items() if v) + ")")


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ImportError("study --executor needs submitit: pip install 'biamat-engine[study]'",
                          name="submitit") from None
    return submitit


def visible_gpus() -> tuple[int, ...]:
    """The GPUs this process sees (indices into CUDA_VISIBLE_DEVICES), without starting CUDA."""
    import torch

    return tuple(range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def slot_environment(slot: int, jobs: int, gpus: tuple[int, ...], gpus_per_run: int,
                     cores: int) -> dict[str, str]:
    """The environment of the job in `slot` (0 .. jobs-1): its own GPUs, round robin over `gpus`
    (so with one GPU per run and as many jobs as GPUs, no two jobs share one), and an equal
    share of the cores for torch's threads."""
    env = {"OMP_NUM_THREADS": str(max(1, cores // jobs))}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpus[(slot * gpus_per_run + k) % len(gpus)])
                                               for k in range(gpus_per_run))
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU machine: what submitit gives a job asking for none
    return env


def torchrun_command(plan_file: Path, gpus: int) -> list[str]:
    """The run's training and evaluation on `gpus` GPUs of its job: `python -m studies.job FILE`
    under torchrun (engine/distributed.py reads its ranks from torchrun's environment)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", "studies.job", str(plan_file)]


class RunJob:
    """One run as a submitit job: callable in the job's process, and Checkpointable, so a
    preempted or timed-out job is requeued with the same call, which resumes from last.pt."""

    def __init__(self, run: RunPlan, log_file: Path, gpus_per_run: int = 1):
        self.run = run
        self.log_file = Path(log_file)
        self.gpus_per_run = gpus_per_run

    def __call__(self) -> str:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
        # Append: a requeued job's log continues the first attempt's.
        with open(self.log_file, "a") as log_file:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log_file.fileno(), 1)  # what the run prints (and a crash's own output) goes to its log
            os.dup2(log_file.fileno(), 2)
            logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                                format="%(asctime)s %(name)s: %(message)s")
            log = logging.getLogger(__name__)
            log.info("%s: job started (CUDA_VISIBLE_DEVICES=%s, %d threads)", self.run.name,
                     os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"), torch.get_num_threads())
            try:
                status = self._execute()
            except Exception:  # not SystemExit: submitit's exit after a requeue is no failure
                log.exception("%s failed", self.run.name)
                raise
            log.info("%s: %s", self.run.name, status)
            return status

    def _execute(self) -> str:
        from studies.runner import execute

        if self.gpus_per_run <= 1:
            outcome = execute(self.run)
            return f"{outcome.status} ({outcome.seconds:.0f} s)"
        for step in self.run.data_steps:  # once, here, not once per rank
            if not step.done:
                step.make()
        plan_file = self.log_file.with_suffix(".run.pkl")
        plan_file.write_bytes(pickle.dumps(self.run))
        subprocess.run(torchrun_command(plan_file, self.gpus_per_run), check=True)
        return f"brought to finished under torchrun, {self.gpus_per_run} processes"

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on preemption or timeout: the same job again (it resumes)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def run_jobs(plan: StudyPlan) -> list[list[RunPlan]]:
    """The waves of runs to submit: every run folder checked against the plan first (as in one
    process), the finished runs left out, and the log folder made."""
    from studies.runner import check_run_dir, finished

    for run in plan.unique_runs():
        check_run_dir(run)
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    return [todo for wave in waves(plan.runs) if (todo := [r for r in wave if not finished(r)])]


def log_file(plan: StudyPlan, run: RunPlan) -> Path:
    return plan.out / "logs" / f"{run.name}.log"


def run_local(plan: StudyPlan, resources: Resources, *,
              on_start: Callable[[RunPlan, Path, dict[str, str]], None] | None = None,
              on_done: Callable[[RunPlan, bool], None] | None = None, poll_s: float = 0.2,
              cores: int | None = None) -> list[str]:
    """Every run of `plan` that is not finished, `resources.jobs` at a time on this machine,
    wave after wave; the names of the runs that failed (a later wave still runs: a run that
    needs a failed one fails on its own, naming what is missing)."""
    submitit = import_submitit()
    gpus = visible_gpus() if resources.gpus is None else resources.gpus
    cores = cores or available_cores()  # affinity and cgroup quota, not the whole host's count
    executor = submitit.LocalExecutor(folder=plan.out / "logs" / "submitit")
    failed: list[str] = []
    running: dict[int, tuple[RunPlan, object]] = {}  # slot -> (run, job)
    try:
        for wave in run_jobs(plan):
            pending = list(wave)
            while pending or running:
                free = [slot for slot in range(resources.jobs) if slot not in running]
                while pending and free:
                    slot, run = free.pop(0), pending.pop(0)
                    env = slot_environment(slot, resources.jobs, gpus, resources.gpus_per_run, cores)
                    pinned = tuple(int(g) for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g)
                    executor.update_parameters(
                        timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=len(pinned), visible_gpus=pinned,
                        setup=[f"export OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"])
                    if on_start is not None:
                        on_start(run, log_file(plan, run), env)
                    running[slot] = (run, executor.submit(RunJob(run, log_file(plan, run), resources.gpus_per_run)))
                for slot, (run, job) in list(running.items()):
                    if job.done():
                        del running[slot]
                        ok = _succeeded(job)
                        if not ok:
                            failed.append(run.name)
                        if on_done is not None:
                            on_done(run, ok)
                time.sleep(poll_s)
    finally:
        for run, job in running.values():  # Ctrl-C: the runs stop (and resume on the next call)
            job.cancel(check=False)
    return failed


def _succeeded(job) -> bool:
    try:
        return job.exception() is None
    except Exception:  # killed before it wrote a result: submitit has no outcome to give
        return False


def submit_slurm(plan: StudyPlan, resources: Resources) -> dict[str, str]:
    """Every run of `plan` that is not finished as Slurm array tasks, one array per wave after
    the arrays before it; {run: job id}, also written to OUT/slurm/jobs.json."""
    from engine.run_dir import write_json

    submitit = import_submitit()
    folder = plan.out / "slurm"
    queued = [name for name, state in run_states(plan) if state.startswith(("pending", "running"))]
    if queued:  # submitting them again would train each twice at once
        raise InputError(f"{', '.join(queued)} still queued or running on Slurm ({folder / 'jobs.json'}): wait for "
                         "them (`study ... --status`) or scancel them before submitting the study again")
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(
        job_name=f"study-{plan.grid.name}", nodes=1, ntasks_per_node=1, gpus_per_node=resources.gpus_per_run,
        array_parallelism=resources.array_parallelism,
        **{k: v for k, v in (("partition", resources.partition), ("time", resources.time_min),
                             ("account", resources.account), ("constraint", resources.constraint)) if v})
    ids: dict[str, str] = {}
    arrays: list[str] = []
    for wave in run_jobs(plan):
        extra = dict(resources.extra)
        if arrays:
            extra["dependency"] = "afterok:" + ":".join(arrays)
        executor.update_parameters(additional_parameters=extra)
        with executor.batch():
            jobs = [executor.submit(RunJob(run, log_file(plan, run), resources.gpus_per_run)) for run in wave]
        arrays.append(jobs[0].job_id.split("_")[0])
        ids.update({run.name: job.job_id for run, job in zip(wave, jobs)})
    if ids:
        write_json(folder / "jobs.json", ids)
    return ids


SLURM_STATES = {"PENDING": "pending", "REQUEUED": "pending", "RUNNING": "running", "COMPLETING": "running",
                "COMPLETED": "finished"}


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: Slurm state} from sacct (a job sacct does not know is left out)."""
    if not job_ids:
        return {}
    arrays = sorted({job.split("_")[0] for job in job_ids})
    result = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise OSError(f"sacct failed ({result.stderr.strip() or result.returncode}): the Slurm states are unknown")
    states = {}
    for line in result.stdout.splitlines():
        if "|" in line:
            job, state = line.split("|")[:2]
            states[job] = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 123"
    return states


def last_error(log: Path) -> str:
    """The last line of a run's log that names an error, else its last line."""
    if not log.is_file():
        return "no log"
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line or "failed" in line]
    return (errors or lines or ["empty log"])[-1]


def run_states(plan: StudyPlan) -> list[tuple[str, str]]:
    """(run, state) for every run the study trains: finished from its folder, else pending or
    running from Slurm (OUT/slurm/jobs.json), else failed with the last error line of its log,
    else interrupted (resumes) or not started."""
    import json

    from engine.run_dir import RunDir
    from studies.runner import finished

    jobs_file = plan.out / "slurm" / "jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.is_file() else {}
    runs = plan.unique_runs()
    states = slurm_states([jobs[r.name] for r in runs if r.name in jobs and not finished(r)])
    rows = []
    for run in runs:
        log = log_file(plan, run)
        slurm = states.get(jobs.get(run.name, ""))
        if finished(run):
            state = "finished"
        elif slurm in ("PENDING", "REQUEUED", "RUNNING", "COMPLETING"):
            state = SLURM_STATES[slurm] + f" (slurm job {jobs[run.name]})"
        elif slurm is not None or (log.is_file() and "failed" in log.read_text(errors="replace")):
            state = "failed" + (f" (slurm {slurm})" if slurm else "") + f": {last_error(log)}"
        elif RunDir(run.dir).holds_run():
            state = "interrupted (resumes from its checkpoint)"
        else:
            state = "not started"
        rows.append((run.name, state))
    return rows
