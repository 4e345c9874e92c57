"""`biamat-engine study NAME`: a paper table as one command: plan the grid's runs, train and
evaluate each (skipping the finished, resuming the interrupted), and write study.md and
study.csv beside the paper's numbers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from cli.console import console, err_console
from kernels.errors import InputError

EPILOG = """[bold]Examples[/]

  biamat-engine study amplification --scale demo --out runs/amplification      # ~15-30 min on 2 CPU cores

  biamat-engine study table1 --scale demo --out runs/table1 --dry-run           # the runs and their commands

  biamat-engine study amplification --scale fashion-mnist --out runs/fashion-mnist  # real images, 5 seeds

  biamat-engine study table2 --scale paper --data-dir data --out runs/table2 --only cifar10-at,cifar10-at-biamat-imagenet

  biamat-engine study table2 --scale paper --out runs/table2 --jobs 8                # one run per GPU of an 8-GPU machine

  biamat-engine study table2 --scale paper --out runs/table2 --executor slurm --slurm-partition gpu --slurm-time 24:00:00

Studies: table1 (labels vs uniform targets), table2 (every preset), table3 / table7 (BiaMAT vs
pseudo-labels and pre-training), table4 (two auxiliary datasets), table5 (extra data and batch
size, standard training), table6 (robust datasets), table13 (pi), amplification (AT alone, +
labels, + uniform, + BiaMAT).
"""

PLAN, RUN, SCHED = "Plan", "Run", "Scheduler"


def _ints(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise typer.BadParameter("expected at least one seed, e.g. 0,1,2")
    return values


def _names(text: Optional[str]) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def _minutes(text: Optional[str]) -> Optional[int]:
    """sbatch's --time forms this takes: minutes, HH:MM:SS or D-HH:MM:SS."""
    if text is None:
        return None
    try:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1 and not days:
            minutes = parts[0]
        elif len(parts) == 3:
            minutes = int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (parts[2] > 0)
        else:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"--slurm-time {text!r}: expected minutes or [D-]HH:MM:SS, e.g. 24:00:00") from None
    if minutes < 1:
        raise typer.BadParameter(f"--slurm-time {text!r}: a job needs at least one minute")
    return minutes


def _resources(executor, jobs, gpus, gpus_per_run, partition, time, account, constraint, parallelism, extra):
    from studies.scheduler import EXECUTORS, Resources

    if executor not in EXECUTORS:
        raise typer.BadParameter(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    slurm_only = {"--slurm-partition": partition, "--slurm-time": time, "--slurm-account": account,
                  "--slurm-constraint": constraint, "--slurm-extra": extra or None,
                  "--slurm-array-parallelism": None if parallelism == 256 else parallelism}
    given = [flag for flag, value in slurm_only.items() if value is not None]
    if executor == "local" and given:
        raise typer.BadParameter(f"{', '.join(given)} only apply to --executor slurm")
    if executor == "slurm" and (jobs > 1 or gpus is not None):
        raise typer.BadParameter("--jobs and --gpus are for --executor local (on Slurm, see --slurm-array-parallelism)")
    pairs = {}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--slurm-extra {item!r}: expected KEY=VALUE, e.g. qos=high")
        pairs[key.strip().lstrip("-")] = value
    try:
        gpu_list = None if gpus is None else tuple(int(g) for g in gpus.split(",") if g.strip())
    except ValueError:
        raise typer.BadParameter(f"--gpus {gpus!r}: expected comma-separated GPU indices, e.g. 0,1,2,3") from None
    if gpu_list is not None and len(gpu_list) < gpus_per_run:
        raise typer.BadParameter(f"--gpus {gpus!r} lists fewer GPUs than --gpus-per-run {gpus_per_run}")
    return Resources(executor=executor, jobs=jobs, gpus=gpu_list, gpus_per_run=gpus_per_run, partition=partition,
                     time_min=_minutes(time), account=account, constraint=constraint,
                     array_parallelism=parallelism, extra=pairs)


def _images(count: Optional[int]) -> str:
    if count is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def study_command(
    name: Annotated[str, typer.Argument(
        help="The study: table1 .. table7, table13, amplification or beyond (see below).", show_default=False)],
    scale: Annotated[str, typer.Option(
        help="paper (the paper's data and settings), demo (built-in shapes, small model, CPU) or fashion-mnist "
             "(real images from Debian's dataset-fashion-mnist, small model, CPU).",
        rich_help_panel=PLAN)],
    out: Annotated[Path, typer.Option(
        "--out", help="Study folder: one run directory per row and seed, study.md, study.csv.", rich_help_panel=PLAN)],
    data_dir: Annotated[Path, typer.Option(
        help="Where the paper scale's .beton files are (or are to be prepared), and where the fashion-mnist "
             "scale writes its per-seed files.", rich_help_panel=PLAN)] = Path("data"),
    seeds: Annotated[Optional[str], typer.Option(
        help="Comma list of seeds (default: 0 at paper scale, 0,1,2 at demo scale, 0-4 at fashion-mnist scale).",
        rich_help_panel=PLAN)] = None,
    only: Annotated[Optional[str], typer.Option(
        help="Comma list of rows to run (default: all; see --dry-run for the names).", rich_help_panel=PLAN)] = None,
    set_: Annotated[List[str], typer.Option(
        "--set", help="A setting for every run, section.key=value (repeatable), e.g. runtime.device=cuda.",
        rich_help_panel=PLAN)] = [],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the runs, their commands and images; write nothing.", rich_help_panel=RUN)] = False,
    status: Annotated[bool, typer.Option(
        "--status", help="Print each run's state (finished, pending, running, failed with its last error line); "
        "write nothing.", rich_help_panel=RUN)] = False,
    executor: Annotated[str, typer.Option(
        help="local (this machine) or slurm (submit the runs as Slurm jobs and return).",
        rich_help_panel=SCHED)] = "local",
    jobs: Annotated[int, typer.Option(
        min=1, help="local: runs trained at once, each a job of its own (its own GPU, or cores / N threads).",
        rich_help_panel=SCHED)] = 1,
    gpus: Annotated[Optional[str], typer.Option(
        help="local: comma list of the GPUs handed out to the jobs, round robin (default: every visible GPU).",
        rich_help_panel=SCHED)] = None,
    gpus_per_run: Annotated[int, typer.Option(
        min=1, help="GPUs of one run; more than one trains it under torchrun inside its job.",
        rich_help_panel=SCHED)] = 1,
    slurm_partition: Annotated[Optional[str], typer.Option(help="slurm: the partition.", rich_help_panel=SCHED)] = None,
    slurm_time: Annotated[Optional[str], typer.Option(
        help="slurm: time limit of a job, minutes or [D-]HH:MM:SS (a run that hits it is requeued and resumes).",
        rich_help_panel=SCHED)] = None,
    slurm_account: Annotated[Optional[str], typer.Option(help="slurm: the account.", rich_help_panel=SCHED)] = None,
    slurm_constraint: Annotated[Optional[str], typer.Option(
        help="slurm: node features, e.g. a100.", rich_help_panel=SCHED)] = None,
    slurm_array_parallelism: Annotated[int, typer.Option(
        min=1, help="slurm: array tasks (runs) at once.", rich_help_panel=SCHED)] = 256,
    slurm_extra: Annotated[List[str], typer.Option(
        help="slurm: another sbatch option, KEY=VALUE (repeatable), e.g. qos=high.", rich_help_panel=SCHED)] = [],
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log progress to stderr.", rich_help_panel=RUN)] = False,
) -> None:
    """Reproduce a paper table: train and evaluate its grid of runs and write study.md and study.csv.

    Each run (a row of the grid at one seed) gets its own run directory under OUT. A finished
    run (its eval.json complete) is skipped, an interrupted one resumes from its checkpoint,
    and a run directory made under other settings stops the study with the setting named. The
    paper scale needs the paper's data as .beton files: a missing file stops the study with the
    `prepare` command that writes it."""
    from cli.common import setup_logging
    from engine.config import parse_overrides
    from engine.outputs import FolderLock
    from studies.grids import get_grid
    from studies.plan import get_scale, make_plan, missing_data_message
    from studies.table import StudyTable

    setup_logging(verbose)
    plan = make_plan(get_grid(name), get_scale(scale), out, seeds=_ints(seeds), data_dir=data_dir,
                     only=_names(only), extra=parse_overrides(set_))
    resources = _resources(executor, jobs, gpus, gpus_per_run, slurm_partition, slurm_time, slurm_account,
                           slurm_constraint, slurm_array_parallelism, slurm_extra)
    if dry_run:
        _print_plan(plan, resources)
        return
    if status:
        _print_status(plan)
        return
    if plan.missing:
        raise InputError(missing_data_message(plan))
    # One study process writes a study folder at a time (each run directory is locked by its own
    # training too); the jobs run under this one's lock (Slurm's once submitted are on their own).
    with FolderLock(plan.out, "study folder"):
        StudyTable.claim(plan)  # a user's study.md in --out stops the study before its first run
        if executor == "slurm":
            _submit_slurm(plan, resources)
            return
        if jobs > 1 or gpus is not None or gpus_per_run > 1:
            _run_jobs(plan, resources)
        else:
            _run_here(plan)
        _write_report(plan)


def _print_plan(plan, resources) -> None:
    from engine.run_dir import RunDir
    from loaders.options import available_cores
    from studies.estimate import estimate
    from studies.runner import finished
    from studies.scheduler import slot_environment, visible_gpus

    gpus = resources.gpus if resources.gpus is not None else visible_gpus()
    slot = 0

    console.print(f"[bold]study {plan.grid.name}[/] at {plan.scale} scale: {len(plan.runs)} runs "
                  f"({len(plan.unique_runs())} to train), seeds {', '.join(map(str, plan.seeds))}, into {plan.out}")
    console.print(plan.grid.title, highlight=False)
    total_train = total_eval = 0
    listed = set()
    for run in plan.runs:
        for step in (s for s in run.data_steps if s.out not in listed):
            listed.add(step.out)
            state = "there (skipped)" if step.done else "to make" + (f" after {step.after.name}" if step.after else "")
            console.print(f"\n[bold]data[/] {step.out}: {state}", highlight=False, soft_wrap=True)
            console.print(f"  make:  {step.command_line()}", highlight=False, soft_wrap=True)
        if run.same_as:
            console.print(f"\n[bold]{run.name}[/]: the same configuration as {run.same_as}; its results stand for both")
            continue
        state = ("finished (skipped)" if finished(run) else
                 "resumes from its checkpoint" if RunDir(run.dir).holds_run() else "new")
        role = " (helper)" if run.row.helper else ""
        console.print(f"\n[bold]{run.name}[/]{role} ({' / '.join(run.row.cells)}, seed {run.seed}): {state}",
                      highlight=False)
        console.print(f"  train: {run.train_command()}", highlight=False, soft_wrap=True)
        console.print(f"  eval:  {run.eval_command()}", highlight=False, soft_wrap=True)
        console.print(f"  images: {_images(run.train_images)} through the training step "
                      f"({run.config.optim.epochs} epochs), {_images(run.eval_images)} evaluated "
                      f"(test images x {len(run.attacks)} attacks)", highlight=False)
        env = slot_environment(slot % resources.jobs, resources.jobs, gpus, resources.gpus_per_run,
                               available_cores())
        slot += 1
        console.print(f"  job:   {resources.describe(env)}", highlight=False, soft_wrap=True)
        on_gpu = run.config.runtime.device != "cpu" and (resources.executor == "slurm" or bool(gpus))
        console.print("  time:  " + estimate(run.train_images, "cuda" if on_gpu else "cpu", run.config.model.name,
                                             run.config.method.name), highlight=False, soft_wrap=True)
        total_train += run.train_images or 0
        total_eval += run.eval_images or 0
    unknown = sum(run.train_images is None for run in plan.unique_runs())
    console.print(f"\nin all: {_images(total_train)} training images, {_images(total_eval)} evaluated, "
                  f"{len(plan.data_steps)} data file(s) made by the study"
                  + (f" ({unknown} run(s) on data not made yet not counted)" if unknown else ""))
    for path, command in plan.missing:
        console.print(f"missing data: {path}\n  {command}", highlight=False, soft_wrap=True)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False)


def _run_here(plan) -> None:
    """Every run in this process, one after the other (the default: one run already uses every core)."""
    from studies.runner import run_study

    status = err_console.status("") if sys.stderr.isatty() else None
    total = len(plan.runs)

    def on_start(i, run):
        err_console.print(f"[bold]{i + 1}/{total}[/] {run.name}", highlight=False)

    def on_data(step):
        err_console.print(f"  making {step.out}: {step.command_line()}", highlight=False, soft_wrap=True)

    def on_done(outcome):
        err_console.print(f"  {outcome.status}" + (f" ({outcome.seconds:.0f} s)" if outcome.seconds else ""),
                          highlight=False)

    def step_hook(run):
        if status is None:
            return None
        epochs = run.config.optim.epochs
        return lambda epoch, batch, batches, rate: status.update(
            f"{run.name}: epoch {epoch + 1}/{epochs}, batch {batch}/{batches}, {rate:.0f} img/s")

    if status is not None:
        status.start()
    try:
        run_study(plan, on_start=on_start, on_done=on_done, step_hook=step_hook,
                  progress=(lambda msg: status.update(msg)) if status else None, on_data=on_data)
    finally:
        if status is not None:
            status.stop()


def _run_jobs(plan, resources) -> None:
    """The runs as local jobs (studies/scheduler.py), `--jobs` at once, their output in
    OUT/logs/RUN.log; a failed run is named with its log after every run that can go has gone."""
    from studies.scheduler import run_local

    def on_start(run, log_file, env):
        pinned = f", GPU {env['CUDA_VISIBLE_DEVICES']}" if env.get("CUDA_VISIBLE_DEVICES") else ""
        err_console.print(f"started {run.name} (log: {log_file}{pinned})", highlight=False)

    def on_done(run, ok):
        err_console.print(f"{'finished' if ok else 'FAILED'} {run.name}", highlight=False)

    failed = run_local(plan, resources, on_start=on_start, on_done=on_done)
    if failed:
        _write_report(plan)
        raise InputError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their logs in {plan.out / 'logs'} "
                        "(the study resumes them when run again)")


def _submit_slurm(plan, resources) -> None:
    from studies.scheduler import submit_slurm

    ids = submit_slurm(plan, resources)
    if not ids:
        console.print("every run is finished: nothing to submit")
        _write_report(plan)
        return
    for name, job in ids.items():
        console.print(f"submitted {name}: slurm job {job}", highlight=False)
    console.print(f"logs in {plan.out / 'logs'} and {plan.out / 'slurm'}; `--status` shows each run's state; "
                  "run the same command again once they are finished to write study.md", highlight=False)


def _print_status(plan) -> None:
    from studies.scheduler import run_states

    for name, state in run_states(plan):
        console.print(f"{name}: {state}", highlight=False, soft_wrap=True)


def _write_report(plan) -> None:
    from benchmarks.common import git_revision
    from engine.runtime import device_name, resolve_device
    from studies.table import StudyTable

    device = resolve_device(plan.runs[0].config.runtime.device)
    facts = {"revision": git_revision(), "device": device_name(device, threads=True)}
    table = StudyTable.read(plan)
    md, table_csv = table.write(facts)
    console.print(table.markdown(facts), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {md} and {table_csv}")
