"""Executes a study plan, run by run, through the engine's own Trainer and evaluation:

    every run's folder checked against the plan first (a mismatch stops the study before any work)
    for each run: finished (its eval.json complete, for the planned attacks) -> skipped
                  its data steps (data_steps.py) whose files are not there -> made first
                  a checkpoint (last.pt)                                  -> resumed, then evaluated
                  nothing yet                                              -> trained, then evaluated

A run folder holds a normal run directory (engine/run_dir.py); `biamat-engine train --resume`
and `biamat-engine eval` work on it as on any other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from engine.config import ConfigError
from engine.evaluation.report import read_eval_report
from engine.run_config import continue_run
from engine.run_dir import RunDir, read_json_lines, refuse_to_replace
from studies.data_steps import DataStep
from studies.plan import RunPlan, StudyPlan

log = logging.getLogger(__name__)

StepHookFactory = Callable[[RunPlan], Callable[[int, int, int, float], None] | None]


@dataclass
class Outcome:
    run: RunPlan
    status: str
    """`finished before`, `trained`, `resumed at epoch N`, `evaluated` or `same as RUN`."""
    seconds: float = 0.0


def check_run_dir(run: RunPlan) -> None:
    """A ConfigError naming each setting in which `run`'s folder differs from the plan (the keys
    a resume may not change, and the number of epochs); a FileExistsError when the folder holds
    files but no run."""
    files = RunDir(run.dir)
    if not files.config.exists():
        refuse_to_replace(run.dir, "this folder is not a run of the study: move it away or pick another --out")
        return
    remedy = (f"The study plans this run otherwise: move {run.dir} away (or pick another --out) to train it "
              "as planned, or run the study with the settings it was made with.")
    # The trainer's own resolution and resume rule, so this check and `train --resume` agree.
    _, changes = continue_run(run.config, files.read_config().to_dict(), f"{run.dir} (a run of this study)",
                              remedy=remedy)
    if "optim.epochs" in changes:
        old, new = changes["optim.epochs"]
        raise ConfigError(f"{run.dir} was trained for optim.epochs = {old}, the study plans {new}. {remedy}")


def finished(run: RunPlan) -> bool:
    """Trained for the planned epochs and evaluated with every planned attack on the planned test set."""
    files = RunDir(run.dir)
    if not (files.eval_report.is_file() and files.metrics.is_file()):
        return False
    metrics = read_json_lines(files.metrics)
    report = read_eval_report(files.eval_report)
    evaluated = set(report.get("attacks", {})) | {"clean"}
    return (bool(metrics) and metrics[-1]["epoch"] >= run.config.optim.epochs and report.get("complete") is True
            and set(run.attacks) <= evaluated and (report.get("test") or {}).get("spec") == run.test)


def evaluate(run: RunPlan, progress: Callable[[str], None] | None = None) -> dict:
    """`biamat-engine eval RUN --test TEST --attacks ...` in this process: the run's best model,
    at the eps and step its config gives, written to its eval.json."""
    from engine.evaluation.runner import EvalPlan, run_evaluation
    from engine.runtime import resolve_device

    plan = EvalPlan(attacks=run.attacks, device=str(resolve_device(run.config.runtime.device)))
    return run_evaluation(run.dir, run.test, plan, progress, out=RunDir(run.dir).eval_report)


def execute(run: RunPlan, on_step: Callable[[int, int, int, float], None] | None = None,
            progress: Callable[[str], None] | None = None,
            on_data: Callable[[DataStep], None] | None = None) -> Outcome:
    """Brings one run to finished: skipped, or its data made, then resumed or trained, then evaluated."""
    from engine.trainer import Trainer

    start = time.perf_counter()
    if run.same_as:
        return Outcome(run, f"same as {run.same_as}")
    check_run_dir(run)
    if finished(run):
        return Outcome(run, "finished before")
    for step in run.data_steps:  # in order: a step's inputs are made before it
        if not step.done:
            if on_data is not None:
                on_data(step)
            step.make()
    files = RunDir(run.dir)
    if files.holds_run():
        done = read_json_lines(files.metrics)
        status = f"resumed at epoch {done[-1]['epoch'] if done else 0}"
        # Trains nothing when the checkpoint already holds every epoch (only the evaluation was missing).
        Trainer(run.config, run.dir, resume=True, on_step=on_step).fit()
    else:
        status = "trained"
        # A config.toml without last.pt is this run's own start, stopped before its first checkpoint.
        Trainer(run.config, run.dir, overwrite=files.config.exists(), on_step=on_step).fit()
    evaluate(run, progress)
    return Outcome(run, status, time.perf_counter() - start)


def run_study(plan: StudyPlan, *, on_start: Callable[[int, RunPlan], None] | None = None,
              on_done: Callable[[Outcome], None] | None = None, step_hook: StepHookFactory | None = None,
              progress: Callable[[str], None] | None = None,
              on_data: Callable[[DataStep], None] | None = None) -> list[Outcome]:
    """Every run of the plan in order, after checking every run folder against the plan."""
    for run in plan.unique_runs():
        check_run_dir(run)
    outcomes = []
    for i, run in enumerate(plan.runs):
        if on_start is not None:
            on_start(i, run)
        outcome = execute(run, step_hook(run) if step_hook else None, progress, on_data)
        log.info("%s: %s (%.0f s)", run.name, outcome.status, outcome.seconds)
        if on_done is not None:
            on_done(outcome)
        outcomes.append(outcome)
    return outcomes
