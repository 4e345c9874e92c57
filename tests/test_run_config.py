"""One resolution of a run's config (engine/run_config.py): the trainer, `train --resume` and a
study's "made under other settings" check agree on every run, because they ask the same function."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

from cli.app import app
from engine.config import ConfigError, load_config
from engine.run_config import continue_run, resolve_config
from studies.grids import Grid, Row, get_grid
from studies.plan import make_plan
from tests.fixtures_study import tiny  # noqa: F401 (a fixture)


def _study_check(plan) -> str | None:
    from studies.runner import check_run_dir

    try:
        check_run_dir(plan.runs[0])
    except ConfigError as e:
        return str(e)
    return None


def _train_resume(run_dir, key: str, value: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--resume", "--set", f"{key}={value}"])
    assert result.exit_code in (0, 1), result.output  # never a traceback
    return result.exit_code, " ".join(result.stderr.split())


def test_a_studys_check_and_train_resume_agree_on_a_run_changed_by_one_key(tiny, tmp_path):
    from studies.runner import run_study

    grid = get_grid("amplification")
    made = tmp_path / "made"
    run_study(make_plan(grid, tiny, made, only=("at-biamat",)))
    saved = load_config(None, made / "at-biamat-s0" / "config.toml")
    cases = [  # (key, a value other than the run's, whether a resume may change it)
        ("method.pi", "0.4", False),
        ("attack.steps", "2", False),
        ("data.batch_size", "4", False),
        ("eval.every", "2", True),
        ("runtime.deterministic", "true", True),
    ]
    for i, (key, value, allowed) in enumerate(cases):
        section, name = key.split(".")
        assert str(getattr(getattr(saved, section), name)).lower() != value  # a real change
        out = tmp_path / f"case{i}"
        shutil.copytree(made, out)
        plan = make_plan(grid, tiny, out, only=("at-biamat",), extra={key: value})
        refusal = _study_check(plan)
        code, stderr = _train_resume(out / "at-biamat-s0", key, value)
        assert (refusal is None) == (code == 0) == allowed, (key, refusal, stderr)
        if not allowed:
            assert f"{key}: " in refusal and f"{key}: " in stderr
            assert refusal.split("would change what the run trains (")[1].split(")")[0] == \
                stderr.split("would change what the run trains (")[1].split(")")[0]


FINE_TUNING = Grid(name="ft", title="t", about="a", columns=("step",),
                   rows=(Row("pre", ("pre-train",), helper=True),
                         Row("fine", ("fine-tune",), settings=("init.source={run:pre}", "init.heads=new"))))


def test_a_studys_check_and_train_resume_agree_on_a_fine_tuning_changed_by_one_key(tiny, tmp_path):
    from studies.runner import run_study

    # The plan names the pre-training's folder as init.source, and config.toml records it as
    # asked (what was read is in run.json): the study's check and `train --resume` accept the run
    # as it is, and refuse it, with the same keys, when the source or the head changes.
    run_study(make_plan(FINE_TUNING, tiny, tmp_path))
    fine_dir = tmp_path / "fine-s0"
    assert json.loads((fine_dir / "run.json").read_text())["init"]["file"] == str(tmp_path / "pre-s0" / "best.pt")

    def planned(extra=None):  # the plan with only its fine-tuning run, as _study_check takes it
        plan = make_plan(FINE_TUNING, tiny, tmp_path, extra=extra or {})
        return dataclasses.replace(plan, runs=[r for r in plan.runs if r.row.name == "fine"])

    assert _study_check(planned()) is None
    assert _train_resume(fine_dir, "eval.every", "1")[0] == 0  # the run's own value: no change
    cases = [  # (key, a value other than the run's, whether a resume may change it); refusals first,
        # as the allowed change is recorded by the resume that makes it
        ("init.source", str(tmp_path / "another-pre"), False),
        ("init.heads", "keep", False),
        ("eval.every", "2", True),
    ]
    for key, value, allowed in cases:
        refusal = _study_check(planned({key: value}))
        code, stderr = _train_resume(fine_dir, key, value)
        assert (refusal is None) == (code == 0) == allowed, (key, refusal, stderr)
        if not allowed:
            assert f"{key}: " in refusal and f"{key}: " in stderr
            assert refusal.split("would change what the run trains (")[1].split(")")[0] == \
                stderr.split("would change what the run trains (")[1].split(")")[0]


def test_an_interrupted_fine_tuning_named_by_its_source_run_resumes_through_the_study(tiny, tmp_path):
    from studies.runner import run_study

    def stop_in_epoch_2(run):
        def hook(epoch, batch, batches, rate):
            if run.row.name == "fine" and epoch == 1:
                raise KeyboardInterrupt
        return hook

    with pytest.raises(KeyboardInterrupt):
        run_study(make_plan(FINE_TUNING, tiny, tmp_path), step_hook=stop_in_epoch_2)
    plan = make_plan(FINE_TUNING, tiny, tmp_path)
    fine = next(r for r in plan.runs if r.row.name == "fine")
    recorded = json.loads(json.dumps(load_config(None, fine.dir / "config.toml").to_dict()))
    assert recorded["init"] == {"source": str((tmp_path / "pre-s0").resolve()), "heads": "new"}
    cfg, changes = continue_run(fine.config, recorded, str(fine.dir))
    assert cfg.init == load_config(None, fine.dir / "config.toml").init
    assert not [key for key in changes if not key.startswith("runtime.")]  # the machine's, resolved at start
    assert [o.status for o in run_study(plan)] == ["finished before", "resumed at epoch 1"]


def test_resolution_is_idempotent_and_leaves_runtime_to_the_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.npz").write_bytes(b"")  # its contents are not read, only that it exists
    cfg = load_config("demo", overrides=["method.aux_mode=labels", "method.warmup_epochs=3",
                                         "data.primary=p.npz", "runtime.device=auto", "init.source=pre"])
    once = resolve_config(cfg)
    assert once.method.warmup_epochs == 0  # no selection runs under labels
    assert once.data.primary == str(tmp_path.resolve() / "p.npz")
    assert once.init.source == str(tmp_path.resolve() / "pre")  # the same source from any folder
    assert once.runtime.device == "auto"
    assert resolve_config(once) == once
    assert continue_run(once, once.to_dict(), "the run") == (once, {})


def test_what_a_field_says_of_itself_is_what_train_and_resume_do():
    import inspect

    from cli.train_cmd import flag_overrides, train_command
    from engine.config import flag_keys
    from engine.resume import SAFE_TO_CHANGE

    options = set(inspect.signature(train_command).parameters)
    keys = flag_keys()
    assert {"--epochs", "--aux-mode", "--init-from"} <= set(keys)
    for flag, key in keys.items():
        assert flag[2:].replace("-", "_") in options, flag  # the option exists ...
    # ... and sets its field: --epochs 7 --aux-mode labels --alpha 0.25 as the run's config
    cfg = load_config("demo", overrides=flag_overrides(epochs=7, aux_mode="labels", alpha=0.25, pi=None))
    assert (cfg.optim.epochs, cfg.method.aux_mode, cfg.method.alpha) == (7, "labels", 0.25)
    # a resume may lengthen a run but never change what it trains
    assert "optim.epochs" in SAFE_TO_CHANGE and not {"method.alpha", "runtime.seed", "data.primary"} & SAFE_TO_CHANGE
