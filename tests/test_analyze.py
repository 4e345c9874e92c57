"""`biamat-engine analyze` on real tiny runs: the figures are PNGs of the promised pixel size, the
report holds the runs' own numbers (curves, routing, Table 14 computed here by hand from
selection.jsonl, the Table 2 layout from eval.json, Fig. 4's ranking recomputed here from the
model and the data), and bad input fails naming the folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from studies.analysis.figures import CURVES_SIZE, ROUTING_SIZE, grid_size, size_px
from engine.trainer import train

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
EVAL = {"clean_acc": 0.8125, "robust_acc": 0.40625,
        "attacks": {"pgd20": {"robust_acc": 0.4375}, "cw20": {"robust_acc": 0.40625}}}


def invoke(*args):
    return runner.invoke(app, ["analyze", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_train_config) -> dict[str, Path]:
    """A 3-epoch AT+BiaMAT run (1 warm-up epoch, so epochs 2-3 are routed) with a hand-written
    eval.json, and a 2-epoch plain AT run without auxiliary data or eval.json."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("runs")
        train(tiny_train_config(), root / "biamat")
        train(tiny_train_config("data.aux=", "method.aux_mode=none", "optim.epochs=2"), root / "at")
    finally:
        torch.set_num_threads(threads)
    (root / "biamat" / "eval.json").write_text(json.dumps(EVAL))
    return {"biamat": root / "biamat", "at": root / "at"}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_png(path: Path, size: tuple[float, float]) -> None:
    width, height = size_px(size)
    image = imread(path)
    assert image.shape[:2] == (height, width), (path, image.shape)


def test_one_run_gives_its_curves_routing_and_table_14(runs):
    run = runs["biamat"]
    result = invoke(run)
    assert result.exit_code == 0, result.output
    out = run / "analysis"
    assert_png(out / "curves-biamat.png", CURVES_SIZE)
    assert_png(out / "routing-biamat.png", ROUTING_SIZE)
    assert_png(out / "fig4-biamat-shapes-aux.png", grid_size(10))  # Fig. 4 by default, the paper's top-10
    report = (out / "analysis.md").read_text()

    metrics = lines(run / "metrics.jsonl")
    last = metrics[-1]
    assert f"Last epoch (3): clean_acc {100 * last['clean_acc']:.2f}%, robust_acc {100 * last['robust_acc']:.2f}%" \
        in report
    assert f"omega {last['omega']:.4f} at epoch 3" in report
    assert f"Routed high: {metrics[1]['n_high_ratio']:.3f} at epoch 2" in report

    # Table 14 by hand: the last routed epoch's counts, ranked by high / seen (ties in class order).
    record = lines(run / "selection.jsonl")[-1]
    assert record["epoch"] == 3
    classes = [(h / s, i) for i, (h, s) in enumerate(zip(record["high"], record["seen"])) if s]
    top = record["class_names"][sorted(classes, key=lambda c: -c[0])[0][1]]
    assert "epoch 3" in report and f"| 1 | {top} |" in report
    for flag, group in ((True, "related"), (False, "unrelated")):
        seen = sum(s for s, r in zip(record["seen"], record["related"]) if r == flag)
        high = sum(h for h, r in zip(record["high"], record["related"]) if r == flag)
        assert f"| {group} | 10 | {high} | {seen} | {high / seen:.3f} |" in report

    # A single run still gets its Table 2 row, from eval.json.
    assert "| run | method | aux mode | auxiliary data | clean | PGD-20 | CW-20 | AA |" in report
    assert "| biamat | AT | biamat | shapes:aux | 81.25 | 43.75 | 40.62 | - |" in report
    assert "wrote" in result.stdout and result.stderr == ""


def test_two_runs_give_one_comparison_table_and_overlaid_curves(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(runs["biamat"], runs["at"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "analysis"  # several runs: ./analysis
    assert_png(out / "curves-all.png", CURVES_SIZE)
    for name in ("curves-biamat.png", "curves-at.png", "routing-biamat.png"):
        assert (out / name).is_file(), name
    assert not (out / "routing-at.png").exists()
    report = (out / "analysis.md").read_text()
    assert report.count("| run | method |") == 1
    assert "| biamat | AT | biamat | shapes:aux | 81.25 | 43.75 | 40.62 | - |" in report
    assert "| at | AT | none | - | - | - | - | - |" in report
    assert "![training curves of every run](curves-all.png)" in report
    at_section = report.split("## at")[1]
    assert "No routing" in at_section and "### Table 14" not in at_section and "### Fig. 3" not in at_section
    assert "No Fig. 4: the run has no auxiliary data." in at_section and not list(out.glob("fig4-at-*"))
    at_last = lines(runs["at"] / "metrics.jsonl")[-1]
    assert f"Last epoch (2): clean_acc {100 * at_last['clean_acc']:.2f}%" in at_section


def test_groups_file_ranks_and_groups_the_last_routed_epoch(runs, tmp_path):
    # A copy whose last routed epoch has distinct ratios, plus a torn line (a crash mid-append).
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.toml", "metrics.jsonl", "selection.jsonl"):
        shutil.copy(runs["biamat"] / name, run / name)
    record = lines(run / "selection.jsonl")[-1]
    n = len(record["class_names"])
    record.update(epoch=4, seen=[10] * (n - 1) + [0], high=list(range(n - 1)) + [0])
    with (run / "selection.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n" + '{"epoch": 5, "aux": 0, "se')
    names = record["class_names"]
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({names[0]: "low", names[1]: "low", names[n - 2]: "high"}))

    result = invoke(run, "--groups", groups, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "analysis.md").read_text()
    assert "epoch 4" in report
    assert f"| 1 | {names[n - 2]} | {n - 2} | 10 | {(n - 2) / 10:.3f} |" in report  # top
    assert f"| 1 | {names[0]} | 0 | 10 | 0.000 |" in report  # bottom
    assert f"Not seen in that epoch (1): {names[n - 1]}." in report
    assert "| low | 2 | 1 | 20 | 0.050 |" in report
    assert f"| high | 1 | {n - 2} | 10 | {(n - 2) / 10:.3f} |" in report
    assert f"No Fig. 4: {run} holds no model yet" in report  # the copy has records only
    rest_high = sum(range(2, n - 2))
    assert f"| (not in the groups file) | {n - 3} | {rest_high} | {10 * (n - 4)} | " \
           f"{rest_high / (10 * (n - 4)):.3f} |" in report


# -- Fig. 4: the most and least confident auxiliary images under the final model ------------------

def fig4_rows(report: str, title: str) -> list[list[str]]:
    """The cells of the `title` table of a Fig. 4 section: rank, image, class, group, confidence."""
    block = report.split(f"{title} ")[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def reference_confidences(run: Path, spec: str, limit: int | None = None, only: str | None = None):
    """Max softmax of the run's model.safetensors on `spec`'s training images, in plain torch:
    (positions in the dataset, confidences, labels, class names, related flags)."""
    from engine.models import load
    from loaders.datasets import open_dataset

    data = open_dataset(spec, "train")
    index = torch.arange(len(data))
    if only is not None:
        index = index[torch.from_numpy(data.labels) == data.class_names.index(only)]
    index = index[:limit]
    x = torch.from_numpy(data.images[index.numpy()]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        conf = torch.softmax(load(run).eval()(x), dim=1).max(dim=1).values
    return index, conf, data.labels[index.numpy()], data.class_names, data.meta["related"]


def test_fig4_shows_the_k_most_and_least_confident_images(runs, tmp_path):
    run = runs["biamat"]
    # On the CPU, as the reference below: a GPU's TF32 convolutions could reorder near ties.
    result = invoke(run, "--out", tmp_path / "out", "--fig4-k", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "out" / "fig4-biamat-shapes-aux.png", grid_size(4))
    report = (tmp_path / "out" / "analysis.md").read_text()
    assert "### Fig. 4: the most and least confident images of shapes-aux (aux 0)" in report
    assert "under model.safetensors (the best epoch" in report and "over all 64 training images" in report

    index, conf, labels, names, related = reference_confidences(run, "shapes:aux?n=64&size=16")
    omega = lines(run / "metrics.jsonl")[-1]["omega"]
    assert f"routed high by the final model: {100 * float((conf >= omega).float().mean()):.1f}%" in report
    for title, order in (("Most confident", conf.argsort(descending=True)), ("Least confident", conf.argsort())):
        rows = fig4_rows(report, title)
        assert [int(r[1]) for r in rows] == index[order[:4]].tolist(), title
        assert [r[2] for r in rows] == [names[labels[i]] for i in order[:4]]
        assert [float(r[4]) for r in rows] == pytest.approx(conf[order[:4]].tolist(), abs=1e-4)
        shares = sum(related[labels[i]] for i in order[:4])
        prefix = "top" if title == "Most confident" else "bottom"
        assert f"{prefix} 4: related {shares} ({100 * shares / 4:.0f}%), unrelated {4 - shares}" in report


def test_fig4_of_one_class_of_other_data_and_its_first_images(runs, tmp_path):
    spec = "shapes:aux?n=96&size=16&seed=7"  # not the run's own auxiliary data
    only = reference_confidences(runs["biamat"], spec)[3][0]
    result = invoke(runs["biamat"], "--out", tmp_path / "out", "--aux-data", spec, "--fig4-class", only,
                    "--fig4-limit", "3", "--fig4-k", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "analysis.md").read_text()
    index, conf, _, _, _ = reference_confidences(runs["biamat"], spec, limit=3, only=only)
    assert "over the first 3 of the " in report and f"training images of class {only!r} of `{spec}`" in report
    top = [int(r[1]) for r in fig4_rows(report, "Most confident")]
    assert top == index[conf.argsort(descending=True)[:2]].tolist()
    assert_png(tmp_path / "out" / "fig4-biamat-shapes-aux.png", grid_size(2))

    result = invoke(runs["biamat"], "--out", tmp_path / "off", "--no-fig4")
    assert result.exit_code == 0 and not list((tmp_path / "off").glob("fig4-*"))
    assert "Fig. 4" not in (tmp_path / "off" / "analysis.md").read_text()


def test_fig4_without_the_recorded_data_is_a_note_and_bad_options_are_named(runs, tmp_path):
    # The run's data moved away: the analysis still runs and says how to draw Fig. 4.
    run = tmp_path / "moved"
    shutil.copytree(runs["biamat"], run, ignore=shutil.ignore_patterns("analysis"))
    config = run / "config.toml"
    config.write_text(config.read_text().replace('"shapes:aux?n=64&size=16"', f'"{tmp_path}/gone/aux.beton"'))
    result = invoke(run, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"the auxiliary data the run recorded is not here ({tmp_path}/gone/aux.beton); pass --aux-data" \
        in (tmp_path / "out" / "analysis.md").read_text()

    assert_fails(invoke(run, "--out", tmp_path / "bad1", "--aux-data", tmp_path / "nowhere.beton"),
                 "nowhere.beton", "no such file")
    assert_fails(invoke(run, "--out", tmp_path / "bad2", "--aux-data", "shapes:aux", "--aux-data", "shapes:aux"),
                 "--aux-data names 2 dataset(s)", "trained with 1")
    assert_fails(invoke(run, "--out", tmp_path / "bad3", "--aux-data", "shapes:aux?n=16&size=16",
                        "--fig4-class", "zebra"), "--fig4-class 'zebra'", "no auxiliary dataset")
    assert_fails(invoke(run, "--out", tmp_path / "bad4", "--device", "gpu"), "--device 'gpu'", "cuda:N")
    assert not any((tmp_path / f"bad{i}").exists() for i in (1, 2, 3, 4))
    assert invoke(run, "--fig4-k", "0").exit_code == 2  # a usage error


# -- bad input: exit 1 naming the folder, nothing written -----------------------------------------

def assert_fails(result, *names):
    assert result.exit_code == 1, result.output
    assert "error: " in result.stderr and "Traceback" not in result.output
    for name in names:
        assert name in result.stderr, (name, result.stderr)


def test_a_folder_that_is_not_a_run_directory_is_named(runs, tmp_path):
    (tmp_path / "photos").mkdir()
    result = invoke(runs["biamat"], tmp_path / "photos", "--out", tmp_path / "out")
    assert_fails(result, "photos", "not a run directory", "config.toml")
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_and_a_file_are_named(tmp_path):
    assert_fails(invoke(tmp_path / "nowhere"), "nowhere", "No such file")
    (tmp_path / "metrics.jsonl").write_text("")
    assert_fails(invoke(tmp_path / "metrics.jsonl"), "metrics.jsonl", "not a run directory")


def test_a_bad_groups_file_is_named(runs, tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text('["circle", "square"]')
    result = invoke(runs["biamat"], "--groups", groups, "--out", tmp_path / "out")
    assert_fails(result, "groups.json", "class names to group names")
    assert not (tmp_path / "out").exists()


def test_without_matplotlib_the_error_says_how_to_install_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    result = invoke(runs["biamat"], "--out", tmp_path / "out")
    assert_fails(result, "matplotlib", "pip install 'biamat-engine[analyze]'")


def test_no_run_directory_is_a_usage_error():
    result = invoke()
    assert result.exit_code == 2 and "Usage:" in result.stderr


def test_fig4_refuses_auxiliary_data_of_another_class_set(runs, tmp_path):
    # The primary shapes have other classes than the auxiliary set the run was routed on.
    before = {p.name: p.read_bytes() for p in runs["biamat"].iterdir() if p.is_file()}
    result = invoke(runs["biamat"], "--out", tmp_path / "out", "--aux-data", "shapes:primary?n=16&size=16",
                    "--device", "cpu")
    assert_fails(result, "shapes:primary?n=16&size=16", "auxiliary dataset 0", "the run was trained on")
    assert not (tmp_path / "out").exists()
    assert {p.name: p.read_bytes() for p in runs["biamat"].iterdir() if p.is_file()} == before
