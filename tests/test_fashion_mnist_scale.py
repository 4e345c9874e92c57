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
    assert len(plan.steps) == 2 * len(fashion_mnist.ROLES)  # every seed its own draw, each file made once
    for run in plan.runs:
        made = {step.out for step in run.steps}
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
