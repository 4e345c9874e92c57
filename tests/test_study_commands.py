"""A study's printed `train` command builds the very config the study trains: the plan's typed
overrides written as flags (`--set section.key=value`, one `--aux` per path) read back the same."""

from __future__ import annotations

import shlex

import pytest

from engine.config import load_config
from studies.grids import GRIDS, get_grid
from studies.plan import get_scale, make_plan


def _config_of(command: str):
    args = shlex.split(command)
    assert args[:2] == ["biamat-engine", "train"]
    preset, sets, aux = None, [], []
    for flag, value in zip(args[2::2], args[3::2]):
        if flag == "--preset":
            preset = value
        elif flag == "--set":
            sets.append(value)
        elif flag == "--aux":
            aux.append(value)
        else:
            assert flag == "--out", flag
    return load_config(preset, overrides=sets, aux=aux or None)  # as `train` builds it


@pytest.mark.parametrize("scale", ["paper", "demo"])
def test_every_runs_train_command_builds_the_runs_config(scale, tmp_path):
    extra = {"runtime.device": "cpu", "optim.milestones": [3, 5]}
    for name in GRIDS:
        plan = make_plan(get_grid(name), get_scale(scale), tmp_path, data_dir=tmp_path / "data", extra=extra)
        for run in plan.unique_runs():
            assert _config_of(run.train_command()) == run.config, (name, run.name)
