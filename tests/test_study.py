"""`biamat-engine study`: the grids and their plans, the paper's numbers, the missing-data stop,
and a tiny study end to end (train, evaluate, table; skip when finished; resume when
interrupted; refuse a run folder made under other settings)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from studies.grids import GRIDS, get_grid
from studies.plan import STAND_INS, get_scale, make_plan
from tests.fixtures_study import tiny  # noqa: F401 (a fixture)

runner = CliRunner()


def study(*args: str):
    return runner.invoke(app, ["study", *args], catch_exceptions=False)


def demo_run_counts(grid, seeds) -> tuple[int, int]:
    """(runs, runs to train) of a study at demo scale, from its grid alone: every table row at
    each seed, every helper row once; table rows that differ only in auxiliary datasets sharing
    a demo stand-in (STAND_INS) have one configuration and train once per seed."""
    table = [r for r in grid.rows if not r.helper]
    helpers = len(grid.rows) - len(table)
    at_demo = {(r.method, r.primary, tuple(STAND_INS[a] for a in r.aux), r.aux_mode if r.aux else None,
                r.settings, r.demo, r.trains_on, r.derived) for r in table}
    return len(table) * len(seeds) + helpers, len(at_demo) * len(seeds) + helpers


def planned(grid, seeds) -> str:
    """The dry run's count line a grid must print: "N runs (M to train)"."""
    runs, to_train = demo_run_counts(grid, seeds)
    return f"{runs} runs ({to_train} to train)"


# -- the paper's numbers ------------------------------------------------------------------------------

def test_paper_numbers_match_the_papers_text():
    from studies.table import paper_numbers

    numbers = paper_numbers()
    # Appendix F: "The model shows 88.75% clean accuracy and 50.78% robust accuracy on AA".
    assert numbers["table2"]["cifar10-at-biamat-imagenet"] == {"clean": 88.75, "pgd100": 57.63, "cw100": 53.04,
                                                               "aa": 50.78}
    # Table 2, CIFAR-100 TRADES+BiaMAT with ImageNet; ImgNet100 AT+BiaMAT with ImgNet900.
    assert numbers["table2"]["cifar100-trades-biamat-imagenet"] == {"clean": 65.82, "pgd100": 36.36,
                                                                    "cw100": 33.42, "aa": 31.87}
    assert numbers["table2"]["imgnet100-at-biamat-imgnet900"]["cw100"] == 35.00
    # Table 1: y~ 47.44 / 48.48 / 48.88 / 50.33, y_ER 48.53 / 49.89 / 49.24 / 49.81.
    assert [numbers["table1"][f"labels-{a}"]["aa"] for a in ("svhn", "cifar100", "places365", "imagenet")] == \
        [47.44, 48.48, 48.88, 50.33]
    assert [numbers["table1"][f"uniform-{a}"]["aa"] for a in ("svhn", "cifar100", "places365", "imagenet")] == \
        [48.53, 49.89, 49.24, 49.81]
    # Table 4's two-dataset rows; Table 13's AT pi = 0.55 is Table 2's model, TRADES' best is 0.50.
    assert numbers["table4"]["at-biamat-svhn-cifar100"] == {"clean": 87.61, "pgd100": 54.58, "cw100": 52.03,
                                                            "aa": 49.88}
    assert numbers["table4"]["at-biamat-places365-imagenet"]["aa"] == 49.58
    assert numbers["table13"]["at-pi0.55"]["aa"] == numbers["table2"]["cifar10-at-biamat-imagenet"]["aa"]
    assert max(numbers["table13"][f"trades-pi{p}"]["aa"] for p in ("0.45", "0.50", "0.55", "0.60")) == 56.64
    # Table 4 repeats Table 2's single-dataset rows.
    for aux in ("svhn", "cifar100", "places365", "imagenet"):
        assert numbers["table4"][f"at-biamat-{aux}"] == numbers["table2"][f"cifar10-at-biamat-{aux}"]


# Table 7's cells the paper's transcription lost (paper_numbers.toml says which it kept).
TABLE7_LOST = {f"table7.cifar100-{row}" for row in ("hendrycks-imagenet", "carmon-places365", "carmon-imagenet",
                                                    "carmon-imagenet500k", "carmon-imagenet250k",
                                                    "carmon-imagenet100k")}


def test_every_row_of_the_paper_tables_has_its_published_numbers():
    from studies.table import paper_row

    for grid in GRIDS.values():
        for row in grid.rows:
            if row.helper or row.beyond_paper or grid.paper_key(row) in TABLE7_LOST:
                continue
            assert paper_row(grid.paper_key(row)), f"{grid.name}: no paper numbers under {grid.paper_key(row)}"


# -- plans ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["paper", "demo"])
def test_every_grid_plans_a_valid_config_for_every_row(scale, tmp_path):
    for grid in GRIDS.values():
        plan = make_plan(grid, get_scale(scale), tmp_path / grid.name, seeds=(0,), data_dir=tmp_path / "data")
        assert sorted(r.row.name for r in plan.runs) == sorted(row.name for row in grid.rows)
        position = {r.row.name: i for i, r in enumerate(plan.runs)}
        for run in plan.runs:
            cfg, row = run.config, run.row
            assert cfg.method.name == row.method and cfg.runtime.seed == 0
            assert len(cfg.data.aux) == len(row.aux)
            assert cfg.method.aux_mode == (row.aux_mode if row.aux else "none")
            assert all(position[ref] < position[row.name] for ref in row.refs())  # what it needs comes first
            for setting in row.settings:
                key, value = setting.split("=")
                section, name = key.split(".")
                ref = re.fullmatch(r"\{run:(.+)\}", value)
                expected = str(plan.out / f"{ref.group(1)}-s0") if ref else value
                assert str(getattr(getattr(cfg, section), name)) in (expected, str(float(value)) if not ref and
                                                                     re.fullmatch(r"[\d.]+", value) else expected)
    assert not (tmp_path / "table1").exists()  # planning writes nothing


def test_paper_scale_runs_the_rows_preset_on_files_under_the_data_dir(tmp_path):
    from engine.config import load_config

    plan = make_plan(get_grid("table1"), get_scale("paper"), tmp_path / "out", data_dir=tmp_path / "d")
    run = {r.row.name: r for r in plan.runs}["uniform-places365"]
    preset = load_config("cifar10-at-biamat-places365")
    assert run.preset == "cifar10-at-biamat-places365" and run.config.method.aux_mode == "uniform"
    assert run.config.data.aux == [str((tmp_path / "d" / "places365-32-train.beton").resolve())]
    assert run.config.model == preset.model and run.config.optim == preset.optim and run.config.attack == preset.attack
    assert run.attacks[:3] == ("clean", "pgd100", "cw100")
    # Two auxiliary datasets (Table 4): both files, one head each.
    both = {r.row.name: r for r in make_plan(get_grid("table4"), get_scale("paper"), tmp_path / "o4",
                                            data_dir=tmp_path / "d").runs}["at-biamat-svhn-cifar100"]
    assert [p.rsplit("/", 1)[1] for p in both.config.data.aux] == ["svhn-train.beton", "cifar100-train.beton"]


def test_demo_scale_stands_in_shapes_groups_and_trains_a_shared_stand_in_once(tmp_path):
    plan = make_plan(get_grid("table1"), get_scale("demo"), tmp_path, seeds=(0, 1))
    runs = {r.name: r for r in plan.runs}
    assert "groups=unrelated" in runs["labels-svhn-s1"].config.data.aux[0]
    assert "groups=related" in runs["uniform-imagenet-s0"].config.data.aux[0]
    assert "seed=1" in runs["labels-svhn-s1"].config.data.primary
    # CIFAR-100 and Places365 share a stand-in: one run each seed, named in the plan's notes.
    assert STAND_INS["cifar100"] == STAND_INS["places365"]
    assert runs["labels-places365-s0"].same_as == "labels-cifar100-s0"
    assert runs["labels-places365-s0"].results_dir == runs["labels-cifar100-s0"].dir
    n_runs, n_train = demo_run_counts(get_grid("table1"), (0, 1))
    assert (len(plan.runs), len(plan.unique_runs())) == (n_runs, n_train)
    # Seed-major: every row at seed 0 before any at seed 1.
    assert [r.seed for r in plan.runs] == [0] * (n_runs // 2) + [1] * (n_runs // 2)
    # The amplification study uses the demo's own auxiliary set (related and unrelated classes).
    amp = make_plan(get_grid("amplification"), get_scale("demo"), tmp_path / "amp")
    assert all("groups=all" in a for r in amp.runs for a in r.config.data.aux)
    assert [r.config.method.aux_mode for r in amp.runs[:4]] == ["none", "labels", "uniform", "biamat"]


def test_dry_run_prints_the_runs_and_their_commands_and_writes_nothing(tmp_path):
    out = tmp_path / "t1"
    result = study("table1", "--scale", "demo", "--out", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    text = result.stdout
    # Every row at the demo's seeds; runs whose configs coincide (shared stand-ins) train once.
    assert planned(get_grid("table1"), get_scale("demo").default_seeds) in text
    assert re.search(r"labels-svhn-s0 .*: new", text)
    assert "train: biamat-engine train --preset demo" in text and f"--out {out}/labels-svhn-s0" in text
    assert f"eval:  biamat-engine eval {out}/baseline-s0 --test" in text and "--attacks clean,pgd20,cw20" in text
    assert "groups=unrelated" in text and "method.aux_mode=uniform" in text
    # Images through the training step, from the data sizes: every epoch passes the n primary
    # images (the last batch short, not dropped) and beside each primary batch one auxiliary batch.
    cfg = {r.name: r for r in make_plan(get_grid("table1"), get_scale("demo"), out).runs}["labels-svhn-s0"].config
    n = int(parse_qs(cfg.data.primary.split("?", 1)[1])["n"][0])
    assert not cfg.data.drop_last
    per_epoch = n + math.ceil(n / cfg.data.batch_size) * cfg.data.aux_batch_size
    train_images = f"{cfg.optim.epochs * per_epoch / 1000:.1f}k"
    section = text[text.index("labels-svhn-s0 ("):]
    assert re.match(rf"[^\n]*\n(?:  .*\n)*?  images: {re.escape(train_images)} through the training step "
                    rf"\({cfg.optim.epochs} epochs\)", section), section[:1500]
    assert "labels-places365-s0: the same configuration as labels-cifar100-s0" in text
    assert not out.exists()


def test_the_beyond_grid_lists_one_arm_per_option_beside_at_and_biamat(tmp_path):
    cfgs = {r.row.name: r.config for r in make_plan(get_grid("beyond"), get_scale("demo"), tmp_path, seeds=(0,)).runs}
    reference = cfgs["at-biamat"]
    assert (reference.method.omega_when, reference.model.aux_bn, reference.method.aux_mode) == ("warmup", "shared", "biamat")
    for name in ("at-biamat-omega-acc", "at-biamat-both"):
        m = cfgs[name].method
        assert (m.omega_when, m.warmup_epochs, m.omega_accuracy, m.omega_latest_epoch, m.omega_holdout) == (
            "accuracy", 5, 0.3, 45, 50)
    assert [cfgs[n].model.aux_bn for n in ("at-biamat-omega-acc", "at-biamat-aux-bn", "at-biamat-both")] == [
        "shared", "separate", "separate"]
    assert cfgs["at-oracle"].method.aux_mode == "oracle"
    assert all("groups=all" in a for c in cfgs.values() for a in c.data.aux)  # related and unrelated classes
    out = tmp_path / "dry"
    result = study("beyond", "--scale", "demo", "--out", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    assert planned(get_grid("beyond"), get_scale("demo").default_seeds) in result.stdout
    assert not out.exists()
    for row in ("at", "at-biamat", "at-biamat-omega-acc", "at-biamat-aux-bn", "at-biamat-both", "at-oracle"):
        assert re.search(rf"\n{row}-s0 \([^)]*\):\s+new", result.stdout), row  # the console may wrap the line


def test_paper_scale_with_missing_data_exits_1_listing_each_file_and_its_prepare_command(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar10-train.beton").write_bytes(b"")  # present: not listed
    result = study("table1", "--scale", "paper", "--data-dir", str(data), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())  # the console wraps long lines
    # Every file the rows' paper presets read, but the one that is there.
    from engine.config import load_config

    configs = [load_config(row.paper_preset()) for row in get_grid("table1").rows]
    files = {Path(f).name for c in configs for f in (c.data.primary, c.data.test, *c.data.aux)}
    assert f"needs {len(files - {'cifar10-train.beton'})} data file(s)" in text
    assert f"missing {data}/cifar10-test.beton" in text
    assert f"biamat-engine prepare cifar10 RAW/cifar10 {data}/cifar10-test.beton --split test --download" in text
    assert f"biamat-engine prepare svhn RAW/svhn {data}/svhn-train.beton --download" in text
    assert f"biamat-engine prepare places365 RAW/places365_standard {data}/places365-32-train.beton --size 32" in text
    assert f"prepare imagenet32 RAW/Imagenet32_train {data}/imagenet32-train.beton" in text
    assert f"missing {data}/cifar10-train.beton" not in text
    assert not (tmp_path / "out").exists()


def test_every_paper_file_a_preset_reads_has_a_prepare_recipe_for_a_known_format():
    from engine.config import load_preset, preset_names
    from studies.paper_data import PAPER_FILES
    from loaders.sources import SOURCES
    from studies.fashion_mnist import PRESET as FASHION_MNIST

    laptop_scale = {"demo", FASHION_MNIST}  # their data is generated or made per seed by the study
    files = {p.split("/")[-1] for name in preset_names() if name not in laptop_scale
             for data in [load_preset(name)["data"]] for p in [data["primary"], data["test"], *data["aux"]]}
    assert files <= set(PAPER_FILES)
    assert all(recipe.args[0] in SOURCES for recipe in PAPER_FILES.values() if recipe.command == "prepare")
    assert {recipe.command for recipe in PAPER_FILES.values()} == {"prepare", "pseudo-label", "robustify"}


def test_a_file_made_from_other_files_names_them_in_the_same_data_folder():
    from studies.paper_data import prepare_command

    assert prepare_command("/d/cifar-AB.beton") == (
        "biamat-engine prepare concat /d/cifar-A.beton,/d/cifar-B.beton /d/cifar-AB.beton")
    assert prepare_command("/d/c10-robust-at.beton") == (
        "biamat-engine robustify runs/cifar10-at /d/cifar10-train.beton /d/c10-robust-at.beton")


def test_unknown_study_scale_or_row_is_named():
    for args, message in ((("nope", "--scale", "demo"), "unknown study 'nope'; known: amplification"),
                          (("table1", "--scale", "huge"), "unknown scale 'huge'"),
                          (("table1", "--scale", "demo", "--only", "labels-mnist"), "no row named labels-mnist")):
        result = study(*args, "--out", "unused", "--dry-run")
        assert result.exit_code == 1 and message in result.stderr, result.stderr


# -- a tiny study end to end -------------------------------------------------------------------------------

def test_a_tiny_study_trains_evaluates_writes_the_table_and_skips_finished_runs(tiny, tmp_path):
    out = tmp_path / "amp"
    args = ("amplification", "--scale", "tiny", "--out", str(out), "--only", "at,at-biamat")
    first = study(*args)
    assert first.exit_code == 0, first.output
    assert "trained" in first.stderr
    reports = {name: json.loads((out / name / "eval.json").read_text()) for name in ("at-s0", "at-biamat-s0")}
    md = (out / "study.md").read_text()
    for name, report in reports.items():
        assert report["complete"] and set(report["attacks"]) == {"pgd2"}
        row = "| AT | - |" if name == "at-s0" else "| AT+BiaMAT | selected by confidence |"
        line = next(line for line in md.splitlines() if line.startswith(row))
        assert f"| 1/1 | {100 * report['clean_acc']:.2f} | {100 * report['attacks']['pgd2']['robust_acc']:.2f} |" in line
    assert "| 87.37 | 50.87 | 50.93 | 48.53 |" in md  # the paper's AT row beside ours
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert [r["row"] for r in rows] == ["at", "at-biamat"]
    assert float(rows[1]["pgd2"]) == pytest.approx(reports["at-biamat-s0"]["attacks"]["pgd2"]["robust_acc"])
    # The selection facts: related vs unrelated auxiliary classes routed high, from selection.jsonl.
    last = [json.loads(line) for line in (out / "at-biamat-s0" / "selection.jsonl").read_text().splitlines()][-1]
    related = sum(h for h, r in zip(last["high"], last["related"]) if r), sum(s for s, r in zip(last["seen"],
                                                                                               last["related"]) if r)
    assert float(rows[1]["related_high_ratio"]) == pytest.approx(related[0] / related[1])
    assert f"({related[0]}/{related[1]})" in md and rows[0]["related_high_ratio"] == ""

    stamp = (out / "at-biamat-s0" / "last.pt").stat().st_mtime_ns
    second = study(*args)
    assert second.exit_code == 0, second.output
    assert second.stderr.count("finished before") == 2 and "trained" not in second.stderr
    assert (out / "at-biamat-s0" / "last.pt").stat().st_mtime_ns == stamp

    mismatch = study(*args, "--set", "method.pi=0.4")
    assert mismatch.exit_code == 1
    text = " ".join(mismatch.stderr.split())
    assert f"{out}/at-s0 (a run of this study)" in text and "method.pi: 0.55 in the checkpoint, 0.4 now" in text
    assert f"move {out}/at-s0 away" in text


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(tiny, tmp_path):
    from studies.runner import run_study

    grid = get_grid("amplification")
    plan = make_plan(grid, tiny, tmp_path / "stopped", only=("at-uniform",))

    def stop_in_epoch_2(run):
        def hook(epoch, batch, batches, rate):
            if epoch == 1:
                raise KeyboardInterrupt
        return hook

    with pytest.raises(KeyboardInterrupt):
        run_study(plan, step_hook=stop_in_epoch_2)
    run = plan.runs[0]
    assert (run.dir / "last.pt").exists() and not (run.dir / "eval.json").exists()
    outcome, = run_study(plan)
    assert outcome.status == "resumed at epoch 1"

    whole = make_plan(grid, tiny, tmp_path / "whole", only=("at-uniform",))
    assert run_study(whole)[0].status == "trained"
    metrics = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (whole.runs[0].dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("epoch", "loss", "loss_pri", "loss_low", "clean_acc", "robust_acc")
    assert [m[k] for m in metrics for k in keep] == pytest.approx([m[k] for m in reference for k in keep])
    assert json.loads((run.dir / "eval.json").read_text())["clean_acc"] == \
        json.loads((whole.runs[0].dir / "eval.json").read_text())["clean_acc"]


def test_a_folder_that_is_not_a_run_stops_the_study_before_any_work(tiny, tmp_path):
    out = tmp_path / "s"
    (out / "at-s0").mkdir(parents=True)
    (out / "at-s0" / "notes.txt").write_text("mine")
    result = study("amplification", "--scale", "tiny", "--out", str(out), "--only", "at-biamat,at")
    assert result.exit_code == 1
    assert "holds notes.txt" in " ".join(result.stderr.split())
    assert not (out / "at-biamat-s0").exists()  # checked before the first run trained


def test_a_row_that_starts_from_another_rows_run_is_planned_and_run_after_it(tmp_path):
    from studies.scheduler import waves
    from studies.grids import Grid, Row

    # {run:ROW} puts that row's run folder of the same seed into a setting (Table 3's
    # pre-train -> fine-tune will name it in train.init_from; data.test stands in here).
    grid = Grid(name="chain", title="t", about="a", columns=("step",),
                rows=(Row("fine", ("fine-tune",), settings=("data.test={run:pre}",)), Row("pre", ("pre-train",))))
    plan = make_plan(grid, get_scale("demo"), tmp_path, seeds=(0, 1), only=("fine",))
    assert [r.name for r in plan.runs] == ["pre-s0", "fine-s0", "pre-s1", "fine-s1"]
    assert plan.runs[3].config.data.test == str(tmp_path.resolve() / "pre-s1")
    assert [[r.name for r in wave] for wave in waves(plan.runs)] == [["pre-s0", "pre-s1"], ["fine-s0", "fine-s1"]]
    with pytest.raises(ValueError, match="refers to {run:gone}, which is not a row"):
        make_plan(Grid(name="bad", title="t", about="a", columns=("c",),
                       rows=(Row("x", ("x",), settings=("data.test={run:gone}",)),)), get_scale("demo"), tmp_path)


# -- derived data: helper runs, data steps, Tables 3, 5, 6, 7 ------------------------------------------

def test_the_new_tables_published_numbers_match_the_papers_text():
    from studies.table import paper_numbers

    numbers = paper_numbers()
    # Table 3: "Carmon et al. [4] ... ImageNet-500k 86.02 59.49 56.43 55.63"; Hendrycks et al. with CIFAR-100.
    assert numbers["table3"]["carmon-imagenet500k"] == {"clean": 86.02, "pgd100": 59.49, "cw100": 56.43, "aa": 55.63}
    assert numbers["table3"]["hendrycks-cifar100"] == {"clean": 80.21, "pgd100": 45.68, "cw100": 44.52, "aa": 42.36}
    # Its TRADES baseline and TRADES+BiaMAT rows are Table 2's models.
    assert numbers["table3"]["baseline"] == numbers["table2"]["cifar10-trades"]
    assert numbers["table3"]["biamat-imagenet"] == numbers["table2"]["cifar10-trades-biamat-imagenet"]
    # Table 7's CIFAR-10 rows repeat Table 3's clean and AA.
    for row in ("hendrycks-cifar100", "hendrycks-imagenet", "carmon-cifar100", "carmon-places365", "carmon-imagenet"):
        assert numbers["table7"][f"cifar10-{row}"] == {m: numbers["table3"][row][m] for m in ("clean", "aa")}
    # Table 6: "AT 87.49±0.20 30.79±1.16", "AT+BiaMAT 88.19±0.16 31.82±1.06".
    assert numbers["table6"]["biamat"] == {"clean": 88.19, "clean_sd": 0.16, "fgsm": 31.82, "fgsm_sd": 1.06}
    # Table 5: at 128 cifar-A + cifar-B (7.32) beats A + B + C (7.45); at 1024 A + B + C (10.23) beats A + B (10.55).
    t5 = numbers["table5"]
    assert t5["ab-b128"]["error"] < t5["abc-b128"]["error"] and t5["abc-b1024"]["error"] < t5["ab-b1024"]["error"]
    assert t5["a-b128"] == {"error": 9.58, "error_sd": 0.21}


def test_derived_rows_read_the_file_the_study_makes_from_a_helper_run_made_once(tmp_path):
    plan = make_plan(get_grid("table6"), get_scale("demo"), tmp_path, seeds=(0, 1, 2))
    runs = {r.name: r for r in plan.runs}
    # Helpers once, at the first seed and first; the rows at every seed; clean only for helpers.
    assert [r.name for r in plan.runs] == ["source-at-s0", "source-biamat-s0", "at-s0", "biamat-s0",
                                           "at-s1", "biamat-s1", "at-s2", "biamat-s2"]
    assert runs["source-at-s0"].attacks == ("clean",) and runs["at-s1"].attacks == ("clean", "fgsm")
    shapes, robust = runs["at-s0"].data_steps
    assert shapes.command == "prepare" and shapes.args == ("shapes", "primary") and shapes.after is None
    assert robust.command == "robustify" and robust.after == runs["source-at-s0"].dir
    assert robust.args == (str(runs["source-at-s0"].dir), str(shapes.out)) and ("steps", 100) in robust.options
    assert robust.out.parent == plan.out / "data"
    # Every seed of the row trains on the one file, from seed 0's source model and data.
    assert {r.config.data.primary for n, r in runs.items() if n.startswith("at-")} == {str(robust.out)}
    assert "seed=1" in runs["at-s1"].config.data.test and "seed0" in shapes.out.name
    # Both robust rows robustify the same shapes file (one step), from different models.
    assert runs["biamat-s0"].data_steps[0] == shapes and runs["biamat-s0"].data_steps[1].out != robust.out
    assert len(plan.data_steps) == 1 + sum(r.derived is not None for r in get_grid("table6").rows)
    assert any("made once, at seed 0" in n for n in plan.notes)


def test_paper_scale_makes_its_derived_files_under_the_data_dir_with_the_presets_names(tmp_path):
    from engine.config import load_config

    data = tmp_path / "d"
    plan = make_plan(get_grid("table3"), get_scale("paper"), tmp_path / "o", data_dir=data)
    runs = {r.row.name: r for r in plan.runs}
    step = runs["carmon-imagenet500k"].data_steps[-1]
    preset = load_config("cifar10-trades-pseudo-imagenet500k")
    assert step.out == data.resolve() / preset.data.aux[0].rsplit("/", 1)[1]
    assert runs["carmon-imagenet500k"].config.data.aux == [str(step.out)]
    assert step.command_line() == (
        f"biamat-engine pseudo-label {tmp_path / 'o' / 'classifier-cifar10-s0'} "
        f"{data.resolve() / 'imagenet32-train.beton'} {step.out} --top-k-per-class 50000")
    assert runs["carmon-places365"].data_steps[-1].command_line().endswith("places365-32-pseudo-cifar10-all.beton --all")
    # The fine-tunings start from the pre-training runs of the study.
    assert runs["hendrycks-imagenet"].config.init.source == str(runs["pretrain-imagenet"].dir)
    assert runs["pretrain-imagenet"].config.data.primary.endswith("imagenet32-train.beton")
    t6 = {r.row.name: r for r in make_plan(get_grid("table6"), get_scale("paper"), tmp_path / "o6",
                                           data_dir=data).runs}
    assert t6["biamat"].config.data.primary == str(data.resolve() / "c10-robust-biamat.beton")
    assert t6["biamat"].data_steps[0].args == (str(t6["source-biamat"].dir), str(data.resolve() / "cifar10-train.beton"))
    assert t6["biamat"].config.model.name == "wrn-34-10" and t6["biamat"].attacks == ("clean", "fgsm")


def test_table5_at_demo_scale_joins_stratified_parts_of_the_primary_shapes_made_by_prepare(tmp_path):
    plan = make_plan(get_grid("table5"), get_scale("demo"), tmp_path, seeds=(0,))
    runs = {r.row.name: r for r in plan.runs}
    a, c, joined = runs["ac-b1024"].data_steps
    assert "--parts 400,200,200 --part A" in a.command_line() and "--n 800" in a.command_line()
    assert "--part C --uniform-noise 64" in c.command_line() and "uniform-noise" not in a.command_line()
    assert joined.args == ("concat", f"{a.out},{c.out}") and runs["ac-b1024"].config.data.primary == str(joined.out)
    assert runs["a-b128"].data_steps == (a,) and runs["a-b128"].config.data.primary == str(a.out)
    assert (runs["ab-b128"].config.data.batch_size, runs["ab-b1024"].config.data.batch_size) == (16, 128)
    assert len(plan.data_steps) == 6  # A, B, C and the three unions, each once
    # At paper scale the presets read the prepared parts: listed with their prepare commands.
    paper = make_plan(get_grid("table5"), get_scale("paper"), tmp_path / "p", data_dir=tmp_path / "d")
    assert not paper.data_steps and dict(paper.missing)[str((tmp_path / "d" / "cifar-AC.beton").resolve())].startswith(
        "biamat-engine prepare concat")


def test_derived_data_is_declared_by_a_paper_file_whose_recipe_gives_its_command_and_role():
    from studies.grids import Derived

    robust = Derived("c10-robust-at.beton", run="source-at")
    assert (robust.command, robust.role, robust.recipe.images) == ("robustify", "primary", 50_000)
    assert Derived("imagenet32-pseudo-cifar100-250k.beton", run="c").recipe.options == (("top-k-per-class", 2500),)
    assert Derived("cifar-AC.beton").role == "primary"
    with pytest.raises(ValueError, match="no recipe for 'mine.beton'"):
        Derived("mine.beton", run="source-at")
    with pytest.raises(ValueError, match="`run` names the row whose model makes it"):
        Derived("c10-robust-at.beton")  # robustify needs a model
    with pytest.raises(ValueError, match="`run` names the row whose model makes it"):
        Derived("cifar-A.beton", run="source-at")  # prepared from raw data: no model


def test_a_data_step_writes_what_its_prepare_command_writes(tmp_path):
    from studies.data_steps import DataStep
    from loaders.beton import read_beton
    from loaders.sources.derive import add_uniform_noise, split_parts
    from loaders.sources.shapes import make_shapes

    options = (("n", 40), ("size", 8), ("seed", 3), ("groups", "related"))
    step = DataStep("prepare", ("shapes", "aux"), tmp_path / "aux.beton", options)
    assert step.command_line() == f"biamat-engine prepare shapes aux {tmp_path}/aux.beton --n 40 --size 8 --seed 3 " \
                                  "--groups related"
    step.make()
    expected = make_shapes("aux", "train", n=40, size=8, seed=3, groups="related")
    np.testing.assert_array_equal(read_beton(step.out).images, expected.images)
    from engine.outputs import claim_beton

    assert claim_beton(step.out, "prepare", overwrite=True)  # recorded as prepare's: `prepare --overwrite` may redo it
    part = DataStep("prepare", ("shapes", "primary"), tmp_path / "c.beton",
                    (("n", 40), ("size", 8), ("parts", "20,10,10"), ("part", "C"), ("uniform-noise", 64)))
    part.make()
    whole = make_shapes("primary", "train", n=40, size=8)
    noisy = add_uniform_noise(split_parts(whole, [20, 10, 10], 0)[2], 64, 0, stream=2)
    np.testing.assert_array_equal(read_beton(part.out).images, noisy.images)
    stamp = part.out.stat().st_mtime_ns
    part.make()  # there: nothing written
    assert part.out.stat().st_mtime_ns == stamp


def test_dry_run_lists_the_data_steps_with_their_commands_before_the_runs_that_read_them(tmp_path):
    out = tmp_path / "t6"
    result = study("table6", "--scale", "demo", "--out", str(out), "--dry-run", "--seeds", "0")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert planned(get_grid("table6"), (0,)) in text
    # The demo's primary shapes file, made once, and one robustified file per derived row.
    made = 1 + sum(r.derived is not None for r in get_grid("table6").rows)
    assert f"{made} data file(s) made by the study" in text
    assert "source-at-s0 (helper)" in text
    made = re.search(r"data (\S+robustify-\w+\.beton): to make after source-at-s0\n  make:  (.+)\n", text)
    assert made and made.group(2).startswith(f"biamat-engine robustify {out}/source-at-s0 {out}/data/shapes-primary-")
    assert text.index(made.group(1)) < text.index("at-s0 (AT, seed 0)")
    assert "eval:  biamat-engine eval" in text and "--attacks clean,fgsm" in text
    assert not out.exists()


def test_paper_scale_missing_data_lists_the_inputs_then_the_files_the_study_makes(tmp_path):
    data = tmp_path / "data"
    result = study("table3", "--scale", "paper", "--data-dir", str(data), "--out", str(tmp_path / "o"),
                   "--only", "carmon-imagenet500k")
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())
    assert f"missing {data}/imagenet32-train.beton" in text and f"missing {data}/cifar10-train.beton" in text
    assert "The study then makes these itself, from its runs" in text
    assert (f"made {data}/imagenet32-pseudo-cifar10-500k.beton biamat-engine pseudo-label {tmp_path}/o/"
            f"classifier-cifar10-s0 {data}/imagenet32-train.beton {data}/imagenet32-pseudo-cifar10-500k.beton "
            "--top-k-per-class 50000") in text
    assert f"missing {data}/imagenet32-pseudo-cifar10-500k.beton" not in text


def test_a_tiny_derived_data_study_makes_its_data_trains_on_it_and_skips_everything_the_second_time(tiny, tmp_path):
    out = tmp_path / "t6"
    args = ("table6", "--scale", "tiny", "--out", str(out), "--only", "at")
    first = study(*args)
    assert first.exit_code == 0, first.output
    log = first.stderr
    # The source model, then the run: its robust dataset made first (the shapes file first), then trained.
    assert log.index("1/2 source-at-s0") < log.index("2/2 at-s0") < log.index("making") < log.index("robustify")
    assert log.index("robustify") < log.index("trained", log.index("2/2"))
    robust = next(out.glob("data/robustify-*.beton"))
    manifest = json.loads(robust.with_name(robust.name + ".json").read_text())
    assert manifest["count"] == 24 and manifest["meta"]["robustify"]["steps"] == 100
    assert str(robust) in (out / "at-s0" / "config.toml").read_text()  # the run trained on it
    report = json.loads((out / "at-s0" / "eval.json").read_text())
    assert set(report["attacks"]) == {"fgsm"} and report["complete"]
    md = (out / "study.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("| AT |"))
    assert f"| 1/1 | {100 * report['clean_acc']:.2f} | {100 * report['attacks']['fgsm']['robust_acc']:.2f} |" in line
    assert "| 87.49 ± 0.20 | 30.79 ± 1.16 |" in line
    assert "## Helper runs" in md and "| source-at-s0 | source model: AT |" in md
    assert "## Data made by the study" in md and "(made)" in md
    stamps = {p: p.stat().st_mtime_ns for p in [robust, *out.glob("*/last.pt")]}
    second = study(*args)
    assert second.exit_code == 0, second.output
    assert second.stderr.count("finished before") == 2 and "making" not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_table_row_that_repeats_a_helper_is_evaluated_as_a_row_on_the_helpers_run(tmp_path):
    # Table 7: the CIFAR-100 TRADES baseline is the CIFAR-100 pre-training's very configuration.
    plan = make_plan(get_grid("table7"), get_scale("paper"), tmp_path, data_dir=tmp_path / "d")
    runs = {r.row.name: r for r in plan.runs}
    assert runs["cifar100-baseline"].same_as == "pretrain-cifar100-s0"
    assert runs["pretrain-cifar100"].attacks == runs["cifar100-baseline"].attacks != ("clean",)
    assert runs["pretrain-imagenet"].attacks == ("clean",)


def test_a_finished_fine_tuning_is_skipped_when_the_study_runs_again(tiny, tmp_path):
    from studies.grids import Grid, Row
    from studies.runner import run_study

    # config.toml records init.source as the plan names it (the run folder), run.json the
    # pre-training's best.pt that was read: the same source, so the second pass skips it.
    grid = Grid(name="ft", title="t", about="a", columns=("step",),
                rows=(Row("pre", ("pre-train",), helper=True),
                      Row("fine", ("fine-tune",), settings=("init.source={run:pre}", "init.heads=new"))))
    assert [o.status for o in run_study(make_plan(grid, tiny, tmp_path))] == ["trained", "trained"]
    assert f'source = "{tmp_path / "pre-s0"}"' in (tmp_path / "fine-s0" / "config.toml").read_text()
    assert json.loads((tmp_path / "fine-s0" / "run.json").read_text())["init"]["file"] == \
        str(tmp_path / "pre-s0" / "best.pt")
    assert [o.status for o in run_study(make_plan(grid, tiny, tmp_path))] == ["finished before"] * 2
