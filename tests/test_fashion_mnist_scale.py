"""The Fashion-MNIST setting: `prepare --grey` against PIL's own grey, a study's prepare step
writing what the printed command writes, and the fashion-mnist scale's plan (its files per seed,
the auxiliary sets each row trains on, the rows it leaves out and why)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.app import app
from loaders.beton import read_beton, read_manifest
from studies import fashion_mnist
from studies.grids import get_grid
from studies.plan import get_scale, make_plan
from tests import fixtures_formats as fx


def prepare(*args):
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(app, ["prepare", *map(str, args)])


def test_grey_is_pils_luma_in_all_three_channels(tmp_path):
    out = tmp_path / "tex.beton"
    result = prepare("shapes", "aux", out, "--n", 40, "--size", 28, "--groups", "unrelated", "--grey")
    assert result.exit_code == 0, result.output
    colour = prepare("shapes", "aux", tmp_path / "colour.beton", "--n", 40, "--size", 28, "--groups", "unrelated")
    assert colour.exit_code == 0, colour.output
    grey, rgb = read_beton(out).images, read_beton(tmp_path / "colour.beton").images
    assert grey.shape == rgb.shape == (40, 28, 28, 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # PIL's "L" conversion (its own fixed-point BT.601) is the reference: at most one level apart.
    pil = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    assert np.abs(grey[..., 0].astype(int) - pil.astype(int)).max() <= 1
    assert (rgb[..., 0] != rgb[..., 1]).any()  # the colour set was colour: the option did something
    assert read_manifest(out)["meta"]["grey"]["weights"] == [0.299, 0.587, 0.114]


def test_grey_leaves_grey_images_as_they_are(tmp_path):
    _, _, images, _ = fx.write_idx(tmp_path / "fm", "train", n=20, gz=True)
    fx.write_idx(tmp_path / "fm", "t10k", n=10)
    out = tmp_path / "fm.beton"
    assert prepare("fashion-mnist", tmp_path / "fm", out, "--grey").exit_code == 0
    np.testing.assert_array_equal(read_beton(out).images[..., 0], images)


def test_a_study_step_writes_what_its_printed_command_writes(tmp_path):
    fx.write_idx(tmp_path / "fm", "train", n=200, gz=True)
    fx.write_idx(tmp_path / "fm", "t10k", n=50)
    steps = fashion_mnist.data_steps(tmp_path / "made", seed=3, source=tmp_path / "fm")
    step = steps["test"]
    step = type(step)(step.command, step.args, step.out, (("split", "test"), ("classes", "0,1,2"),
                                                          ("n-per-class", 2), ("seed", 3)))
    step.make()
    by_hand = tmp_path / "by-hand.beton"
    args = step.command_line().split()[1:]  # biamat-engine prepare ... -> prepare ...
    args[args.index(str(step.out))] = str(by_hand)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_beton(step.out).images, read_beton(by_hand).images)
    np.testing.assert_array_equal(read_beton(step.out).labels, read_beton(by_hand).labels)
    assert read_manifest(step.out)["meta"]["subset"]["classes"] == [0, 1, 2]
    assert read_manifest(step.out)["count"] == 6


def test_the_scale_plans_four_files_per_seed_and_both_auxiliary_sets(tmp_path):
    plan = make_plan(get_grid("amplification"), get_scale("fashion-mnist"), tmp_path / "out", seeds=(0, 1),
                     data_dir=tmp_path / "data")
    assert {r.row.name for r in plan.runs} == {"at", "at-labels", "at-uniform", "at-biamat"}
    assert len(plan.data_steps) == 2 * len(fashion_mnist.ROLES)  # every seed its own draw, each file made once
    for run in plan.runs:
        made = {step.out for step in run.data_steps}
        cfg = run.config
        assert {cfg.data.primary, cfg.data.test, *cfg.data.aux} <= {str(p) for p in made}
        assert all(f"seed{run.seed}" in str(p) for p in made)
        assert cfg.attack.eps == pytest.approx(0.1)
        if run.row.name == "at":
            assert cfg.data.aux == [] and cfg.method.aux_mode == "none"
        else:  # the stand-in is "all": the related Fashion-MNIST classes and the textures
            assert [p.split("/")[-1].split("-")[0] for p in cfg.data.aux] == ["fashion", "shapes"]
            assert cfg.method.aux_mode == run.row.aux_mode


def test_the_scale_leaves_out_what_it_cannot_run_and_says_why(tmp_path):
    beyond = make_plan(get_grid("beyond"), get_scale("fashion-mnist"), tmp_path / "b", seeds=(0,), data_dir=tmp_path)
    assert "at-oracle" not in {r.row.name for r in beyond.runs}
    assert any("at-oracle" in note and "groups" in note for note in beyond.notes)
    acc = next(r for r in beyond.runs if r.row.name == "at-biamat-omega-acc").config.method
    # 3x chance of the 5 primary classes, and decided before the last epochs.
    assert acc.omega_when == "accuracy" and acc.omega_accuracy == pytest.approx(3 / 5)
    assert acc.omega_latest_epoch < load_epochs()
    table3 = make_plan(get_grid("table3"), get_scale("fashion-mnist"), tmp_path / "t", seeds=(0,), data_dir=tmp_path)
    assert all(not r.row.helper and not r.row.refs() for r in table3.runs)
    assert any("helper" in note for note in table3.notes)


def load_epochs() -> int:
    from engine.config import load_config

    return load_config(fashion_mnist.PRESET).optim.epochs


def test_every_auxiliary_class_the_scale_makes_has_its_declared_group(tmp_path):
    fx.write_idx(tmp_path / "fm", "train", n=400, gz=True)
    fx.write_idx(tmp_path / "fm", "t10k", n=10)
    steps = fashion_mnist.data_steps(tmp_path / "made", seed=0, source=tmp_path / "fm")
    for role in ("related", "unrelated"):
        step = steps[role]
        small = tuple((k, 3 if k == "n-per-class" else 30 if k == "n" else v) for k, v in step.options)
        type(step)(step.command, step.args, step.out, small).make()
    groups = get_scale("fashion-mnist").class_groups()
    for role in ("related", "unrelated"):
        names = read_manifest(steps[role].out)["class_names"]
        assert {groups[name] for name in names} == {role}
    assert read_manifest(steps["related"].out)["class_names"][1] == "Shirt"


# -- the demo on Fashion-MNIST ---------------------------------------------------------------------

def test_the_demo_trains_the_studys_setting_on_fashion_mnist_and_reads_it_against_the_study(tmp_path):
    import json
    import tomllib

    fm = tmp_path / "fm"
    fx.write_idx(fm, "train", n=3000, gz=True)  # 300 of each class: the setting's draws fit
    fx.write_idx(fm, "t10k", n=600)
    out = tmp_path / "demo"
    import os

    import torch

    def thread_settings():
        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.environ.get("NUMBA_NUM_THREADS")

    before = thread_settings()
    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(
        app, ["demo", "--out", str(out), "--source", str(fm), "--device", "cpu", "--epochs", "1", "--only", "biamat"])
    assert result.exit_code == 0, result.output
    # One arm trains in this process with one thread, and leaves the process as it found it
    # (numba refuses a changed NUMBA_NUM_THREADS once its threads run).
    assert thread_settings() == before
    summary = json.loads((out / "demo.json").read_text())
    assert summary["dataset"] == "fashion-mnist" and summary["status"] == "done"
    bia = tomllib.loads((out / "biamat" / "config.toml").read_text())
    from engine.config import load_config

    preset = load_config(fashion_mnist.PRESET)
    assert bia["attack"]["eps"] == preset.attack.eps and bia["model"]["name"] == preset.model.name
    # The plain-AT arm is the shapes demo's code path (tests/test_cli_train.py): one arm here saves CI time.
    assert len(bia["data"]["aux"]) == 2 and summary["results"]["biamat"]["n"] == 300
    names = [row[0] for row in summary["results"]["biamat"]["selection"]]
    assert names == ["Fashion-MNIST's other classes (related)", "grey textures (unrelated)"]
    assert summary["study"]["within_spread"] is None  # one arm (and --epochs): not read against the study
    assert "Fashion-MNIST" in result.stdout and "AT+BiaMAT" in result.stdout


def test_the_demo_places_its_run_inside_or_outside_the_studys_seed_spread():
    from studies.demo import compare_with_study

    reference = {"seeds": [0, 1, 2], "revision": "abc1234", "machine": "a test", "verdict": "not resolved",
                 "arms": {"at": {"clean": [0.8, 0.8, 0.8], "pgd20": [0.50, 0.50, 0.50]},
                          "biamat": {"clean": [0.8, 0.8, 0.8], "pgd20": [0.52, 0.50, 0.48]}}}
    # Per-seed differences +2, 0, -2 points: mean 0, sd 2, so mean +- 2 sd is -4 .. +4.
    def run(at: float, bia: float) -> dict:
        return {"at": {"robust_acc": at}, "biamat": {"robust_acc": bia}}

    inside = compare_with_study(run(0.50, 0.53), reference, same_setting=True)
    outside = compare_with_study(run(0.50, 0.45), reference, same_setting=True)
    assert inside.within is True and "within" in inside.lines[-1] and "-4.0 to +4.0" in inside.lines[-1]
    assert outside.within is False and "outside" in outside.lines[-1]
    assert "+0.0 ± 2.0" in inside.lines[3] and "abc1234" in inside.lines[0]
    assert compare_with_study(run(0.5, 0.5), None, same_setting=True).within is None


def test_the_demo_falls_back_to_shapes_with_a_notice_where_fashion_mnist_is_missing(tmp_path, monkeypatch, capsys):
    from cli import demo_cmd

    monkeypatch.setattr(fashion_mnist, "default_source", lambda: tmp_path / "not-installed")
    assert demo_cmd._default_data([], None) == "shapes"
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err.replace("\n", " ")
    assert demo_cmd._default_data(["--n"], None) == "shapes"
    assert demo_cmd._default_data([], tmp_path / "given") == "fashion-mnist"  # its error is the data step's
