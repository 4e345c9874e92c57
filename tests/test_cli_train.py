"""The `biamat-engine` CLI through Typer's CliRunner: help with examples, `train` into a run
directory and `--resume`, user errors as `error: ...` with exit code 1, `info`. The error policy
across every command: tests/test_cli_errors.py."""

from __future__ import annotations

import json
import tomllib

import pytest
from typer.testing import CliRunner

from cli.app import app, bench_app
from engine.config import to_toml

pytestmark = pytest.mark.usefixtures("torch_single_thread")

runner = CliRunner(env={"COLUMNS": "160", "NO_COLOR": "1"})

TINY_FLAGS = [
    "--primary", "shapes:primary?n=64&size=16", "--aux", "shapes:aux?n=64&size=16",
    "--test", "shapes:primary?n=32&size=16", "--model", "wrn-10-1", "--device", "cpu",
    "--set", "data.batch_size=32", "--set", "data.aux_batch_size=32", "--set", "attack.steps=2",
    "--set", "method.warmup_epochs=1", "--set", "eval.n=32", "--set", "eval.steps=2",
]

COMMANDS = [[c.name] for c in app.registered_commands] + [["bench", c.name] for c in bench_app.registered_commands]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_the_core_commands_are_registered():
    assert {"train", "demo", "info"} <= {c.name for c in app.registered_commands}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_commands_help_shows_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"biamat-engine {' '.join(command)}" in result.output  # the example runs this command


def test_train_writes_a_run_directory_and_resume_continues_it(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", *TINY_FLAGS, "--epochs", "2", "--alpha", "0.7", "--pi", "0.4", "--seed", "3",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "run directory" in result.output and "robust" in result.output  # the epoch table
    written = tomllib.loads((out / "config.toml").read_text())
    assert written["method"]["alpha"] == 0.7 and written["method"]["pi"] == 0.4
    assert written["optim"]["epochs"] == 2 and written["runtime"]["seed"] == 3
    assert written["data"]["aux"] == ["shapes:aux?n=64&size=16"] and written["model"]["name"] == "wrn-10-1"
    for name in ("metrics.jsonl", "selection.jsonl", "last.pt", "best.pt", "model.safetensors"):
        assert (out / name).is_file(), name

    # --resume reads the run's own config.toml; --set may extend it.
    result = invoke("train", "--out", str(out), "--resume", "--set", "optim.epochs=3")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    resumed = tomllib.loads((out / "config.toml").read_text())
    assert resumed["method"]["alpha"] == 0.7 and resumed["optim"]["epochs"] == 3


def test_train_from_a_config_file(tmp_path, tiny_train_config):
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_train_config("optim.epochs=1", "data.aux=", "method.aux_mode=none")))
    result = invoke("train", "--config", str(config), "--method", "trades", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["method"]["name"] == "trades"


@pytest.mark.parametrize("args, message", [
    (["--set", "method.pi=abc"], "method.pi = 'abc': expected a float"),
    (["--set", "method.pie=0.5"], "unknown key(s) pie in method"),
    (["--set", "methodpi"], "expected section.key=value"),
    (["--method", "sgd"], "method.name = 'sgd'"),
    (["--model", "resnet-50"], "model.name"),
    (["--preset", "cifar11-at"], "unknown preset 'cifar11-at'"),
    (["--config", "missing.toml"], "config file not found: missing.toml"),
])
def test_bad_settings_exit_1_with_a_message_naming_the_key(args, message, tmp_path):
    result = invoke("train", *args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resume_without_last_pt_is_an_error(tmp_path):
    result = invoke("train", "--out", str(tmp_path), "--resume")
    assert result.exit_code == 1
    assert "last.pt does not exist" in result.output and "without --resume" in result.output


@pytest.mark.parametrize("args, message", [
    (["--resume", "--preset", "demo"], "drop --preset/--config"),
    (["--resume", "--overwrite"], "not both"),
    (["--preset", "demo", "--config", "x.toml"], "--preset or --config, not both"),
    (["--device", "gpu"], "expected auto | cpu | cuda | cuda:N"),
])
def test_flags_that_exclude_each_other_are_usage_errors(tmp_path, args, message):
    (tmp_path / "last.pt").write_bytes(b"")
    result = invoke("train", "--out", str(tmp_path), *args)
    assert result.exit_code == 2 and message in result.output


def test_a_nan_loss_exits_1_with_the_advice(tmp_path):
    result = invoke("train", *TINY_FLAGS, "--set", "optim.lr=1e30", "--out", str(tmp_path / "run"))
    assert result.exit_code == 1, result.output
    assert "NaN or inf" in result.output and "Traceback" not in result.output


def test_info_lists_versions_extras_and_presets():
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "numba" in result.output
    assert "cifar10-at-biamat-imagenet" in result.output and "demo" in result.output


def test_demo_selection_summary_groups_related_and_unrelated_classes(tmp_path):
    from engine.config import load_config
    from studies.demo import selection_summary

    # Two auxiliary datasets are pooled; records as the trainer writes them (class names, related flags).
    lines = [
        {"epoch": 1, "aux": 0, "class_names": ["a", "b"], "related": [True, False], "seen": [100, 100],
         "high": [100, 100]},
        {"epoch": 2, "aux": 0, "class_names": ["a", "b", "c"], "related": [True, True, False],
         "seen": [10, 20, 30], "high": [5, 15, 3]},
        {"epoch": 2, "aux": 1, "class_names": ["d"], "related": [False], "seen": [4], "high": [1]},
    ]
    (tmp_path / "selection.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "config.toml").write_text(to_toml(load_config("demo")))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 2}) + "\n")
    assert selection_summary(tmp_path) == [
        ("related to the primary classes", 30, 20),  # only the last epoch counts
        ("unrelated (textures, noise)", 34, 4),
    ]


TINY_DEMO = ("--device", "cpu", "--epochs", "2", "--n", "64", "--aux-size", "64", "--test-size", "32")


def test_demo_trains_both_arms_side_by_side_and_prints_one_table(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", str(out), *TINY_DEMO)
    assert result.exit_code == 0, result.output
    for arm in ("at", "biamat"):
        for name in ("config.toml", "metrics.jsonl", "last.pt", "model.safetensors", "eval.json"):
            assert (out / arm / name).is_file(), (arm, name)
    assert (out / "biamat" / "selection.jsonl").is_file()
    # Same model, seed, primary data and epochs; the auxiliary set only in the second arm.
    at, bia = (tomllib.loads((out / arm / "config.toml").read_text()) for arm in ("at", "biamat"))
    for section, key in (("model", "name"), ("runtime", "seed"), ("data", "primary"), ("data", "test"),
                         ("optim", "epochs")):
        assert at[section][key] == bia[section][key], (section, key)
    assert at["method"]["aux_mode"] == "none" and not at["data"]["aux"]
    assert bia["method"]["aux_mode"] == "biamat" and len(bia["data"]["aux"]) == 1
    assert len(list((out / "data").glob("*.beton"))) == 3
    summary = json.loads((out / "demo.json").read_text())
    assert summary["status"] == "done" and set(summary["results"]) == {"at", "biamat"}
    for arm, r in summary["results"].items():
        report = json.loads((out / arm / "eval.json").read_text())
        assert report["n"] == r["n"] == 32 and set(report["attacks"]) == {"pgd20"}
        assert 0.0 <= r["robust_acc"] == report["attacks"]["pgd20"]["robust_acc"] <= r["clean_acc"] <= 1.0
    # One table: both arms, the difference, then the selection table and the verdict line.
    for text in ("plain AT", "AT+BiaMAT", "difference", "PGD-20", "related to the primary classes",
                 "unrelated", summary["verdict"][:30]):
        assert text in result.stdout, text
    # Running again replaces the demo's own earlier results.
    assert invoke("demo", "--out", str(out), *TINY_DEMO).exit_code == 0


def test_demo_only_runs_one_arm_and_a_new_seed_writes_new_data(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", str(out), "--only", "at", "--seed", "1", *TINY_DEMO)
    assert result.exit_code == 0, result.output
    assert (out / "at" / "eval.json").is_file() and not (out / "biamat").exists()
    assert "plain AT" in result.stdout and "difference" not in result.stdout
    assert all("seed1" in p.name for p in (out / "data").glob("*.beton"))
    assert invoke("demo", "--out", str(out), "--only", "at", "--seed", "2", *TINY_DEMO).exit_code == 0
    assert len(list((out / "data").glob("*seed2.beton"))) == 2  # the AT arm needs no auxiliary file
    assert invoke("demo", "--only", "pgd").exit_code == 2


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = invoke("demo", "--out", str(tmp_path), *TINY_DEMO)
    assert result.exit_code == 1 and str(tmp_path) in result.output and "demo.json" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_new_run_never_replaces_an_existing_one_without_overwrite(tmp_path):
    args = ["train", "--out", str(tmp_path), "--primary", "shapes:primary?n=32&size=16",
            "--test", "shapes:primary?n=16&size=16", "--model", "wrn-10-1", "--epochs", "1", "--device", "cpu",
            "--set", "data.batch_size=16", "--set", "attack.steps=1", "--set", "eval.n=8", "--set", "eval.steps=1"]
    assert invoke(*args).exit_code == 0
    before = (tmp_path / "last.pt").read_bytes()
    refused = invoke(*args)
    assert refused.exit_code == 1 and "--resume" in refused.output and "--overwrite" in refused.output
    assert (tmp_path / "last.pt").read_bytes() == before
    (tmp_path / "eval.json").write_text("{}")  # a stale report of the old run
    assert invoke(*args, "--overwrite").exit_code == 0
    assert not (tmp_path / "eval.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
