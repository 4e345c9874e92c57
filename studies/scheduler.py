"""A study's runs several at a time (`study --jobs N`), each in a process of its own.

The engine seeds torch's global random state per run and torch's thread pool is per process,
so two runs cannot share one process: each run is `runner.execute` in a fresh (spawned)
process with an equal share of the cores, its log in OUT/logs/RUN.log. The plan already knows
what each run needs (`RunPlan.needs`), so the runs go in waves: a run starts once every run it
needs has finished.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from studies.plan import RunPlan, StudyPlan


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


def run_in_processes(plan: StudyPlan, jobs: int, *, on_start: Callable[[RunPlan, Path], None] | None = None,
                     on_done: Callable[[RunPlan, bool], None] | None = None) -> list[str]:
    """Every run of `plan`, `jobs` at a time; the names of the runs that failed (a later wave
    still runs: a run that needs a failed one fails on its own, naming what is missing)."""
    from studies.runner import check_run_dir

    runs = plan.unique_runs()
    for run in runs:
        check_run_dir(run)  # every mismatch before any work, as in one process
    logs = plan.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state carried over

    def launch(run: RunPlan) -> str | None:
        log_file = logs / f"{run.name}.log"
        if on_start is not None:
            on_start(run, log_file)
        process = spawn.Process(target=_execute_logged, args=(run, str(log_file), threads), name=run.name)
        process.start()
        process.join()
        if on_done is not None:
            on_done(run, process.exitcode == 0)
        return None if process.exitcode == 0 else run.name

    failed: list[str] = []
    for wave in waves(plan.runs):
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            failed += [name for name in pool.map(launch, wave) if name]
    return failed


def _execute_logged(run: RunPlan, log_file: str, threads: int) -> None:
    """In the run's own process: its output and log records into `log_file`, exit status 1 on
    any failure (the traceback is in the log)."""
    import torch

    from studies.runner import execute

    torch.set_num_threads(threads)
    with open(log_file, "w") as log:
        os.dup2(log.fileno(), 1)  # what the run prints (and a crash's own output) goes to its log too
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                            format="%(asctime)s %(name)s: %(message)s")
        try:
            outcome = execute(run)
        except BaseException:
            logging.getLogger(__name__).exception("%s failed", run.name)
            sys.exit(1)
        logging.getLogger(__name__).info("%s: %s (%.0f s)", run.name, outcome.status, outcome.seconds)
