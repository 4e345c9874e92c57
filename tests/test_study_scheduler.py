"""`study --jobs N` (studies/scheduler.py): runs in waves after the runs they need, each in a
process of its own with its log, a failed run named without stopping the others."""

from __future__ import annotations

import dataclasses
import json

from studies.grids import Grid, Row
from studies.plan import get_scale, make_plan
from studies.scheduler import run_in_processes, waves
from tests.fixtures_study import tiny  # noqa: F401 (a fixture)

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
    failed = run_in_processes(plan, 2, on_start=lambda run, log: events.append(("start", run.name)),
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
    assert {p.name for p in (out / "logs").iterdir()} == {"at-s0.log", "at-biamat-s0.log"}
    md = (out / "study.md").read_text()
    for name, row in (("at-s0", "| AT | - |"), ("at-biamat-s0", "| AT+BiaMAT | selected by confidence |")):
        report = json.loads((out / name / "eval.json").read_text())
        line = next(line for line in md.splitlines() if line.startswith(row))
        assert f"| {100 * report['clean_acc']:.2f} |" in line
    again = CliRunner().invoke(app, args)  # both finished: nothing trains, the logs say so
    assert again.exit_code == 0 and "finished before" in (out / "logs" / "at-s0.log").read_text()
