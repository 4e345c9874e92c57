"""How every `biamat-engine` command fails (cli/errors.py): usage errors exit 2, user and data
errors exit 1 with `error: message` on stderr naming the path, Ctrl-C exits 130, bugs keep their
traceback; and how the app is put together (no import cycle, `--help` order, no torch)."""

from __future__ import annotations

import ast
import errno
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from cli.app import app
from cli.errors import ENGINE_ERRORS, UsageError, describe, is_user_error
from engine.config import ConfigError
from kernels.errors import InputError
from loaders.sources.base import SourceError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *names: str) -> None:
    """Exit 1, `error: ...` on stderr (stdout keeps only results) naming `names`, no traceback."""
    assert result.exit_code == 1, result.output
    assert "error: " in result.stderr and "error:" not in result.stdout
    for name in names:
        assert name in result.stderr, (name, result.stderr)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


# -- one user error per command: the file (or the device) it names is missing -------------------

def user_error_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    (tmp / "a-file").write_text("")
    return {
        "prepare": (["prepare", "cifar10", tmp / "missing.tar.gz", tmp / "c.beton"], "missing.tar.gz"),
        "train": (["train", "--config", tmp / "missing.toml", "--out", tmp / "run"], "missing.toml"),
        "eval": (["eval", tmp / "missing.safetensors", "--test", tmp / "t.npz", "--device", "cpu"],
                 "missing.safetensors"),
        "export": (["export", tmp / "missing-run"], "missing-run"),
        "pseudo-label": (["pseudo-label", tmp / "missing-run", tmp / "aux.beton", tmp / "c.beton", "--all"],
                         "aux.beton"),
        "analyze": (["analyze", tmp / "missing-run", "--out", tmp / "analysis"], "missing-run"),
        # demo reads no file: its output folder lies under a file
        "demo": (["demo", "--out", tmp / "a-file" / "demo", "--device", "cpu"], str(tmp / "a-file")),
    }


@pytest.mark.parametrize("command", ["prepare", "train", "eval", "export", "pseudo-label", "analyze", "demo"])
def test_a_missing_file_exits_1_naming_it(command, tmp_path):
    args, name = user_error_cases(tmp_path)[command]
    result = invoke(*args)
    assert_user_error(result, name)
    assert not (tmp_path / "c.beton").exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "analysis").exists()


@no_cuda
@pytest.mark.parametrize("bench", ["step", "loader", "kernels", "eval", "ddp"])
def test_bench_on_cuda_without_a_gpu_exits_1_before_any_work(bench):
    # The bench commands read no files; what a user gets wrong is the machine.
    result = invoke("bench", bench, "--device", "cuda")
    assert_user_error(result, "--device cuda", "use --device cpu")


@pytest.mark.parametrize("bench", ["step", "eval"])
def test_bench_with_an_impossible_architecture_exits_1_naming_it(bench):
    # The name reaches engine.arch.parse_arch unchecked by the command line: its InputError, not a traceback.
    result = invoke("bench", bench, "--model", "wrn-5-1", "--device", "cpu")
    assert_user_error(result, "wrn-5-1", "6n+4")


# -- one usage error per command: exit 2 with click's usage line ----------------------------------

USAGE_ERRORS = {
    "prepare": (["prepare", "shapes", "primary", "out.bin"], "must end in .beton"),
    "train": (["train", "--out", "r", "--preset", "demo", "--config", "c.toml"], "not both"),
    "eval": (["eval", "m", "--test", "t.npz", "--step-size", "2/0"], "cannot read '2/0'"),
    "export": (["export", "r", "--format", "onnx"], "unknown export format 'onnx'"),
    "pseudo-label": (["pseudo-label", "m", "a.beton", "o.beton"], "--top-k-per-class K"),
    "analyze": (["analyze", "--out", "a"], "Missing argument 'RUN_DIR'"),
    "demo": (["demo", "--device", "gpu"], "expected auto | cpu | cuda | cuda:N"),
    "info": (["info", "--verbose"], "No such option"),
    "bench step": (["bench", "step", "--aux-mode", "all"], "expected biamat, labels, uniform or none"),
    "bench loader": (["bench", "loader", "--backends", "ffcv,pil"], "unknown backends ['pil']"),
    "bench kernels": (["bench", "kernels", "--device", "tpu"], "expected cpu | cuda"),
    "bench eval": (["bench", "eval", "--device", "cuda:1"], "expected cpu | cuda"),
    "bench ddp": (["bench", "ddp", "--world-sizes", "0"], "positive process counts"),
}


@pytest.mark.parametrize("command", USAGE_ERRORS)
def test_a_bad_option_exits_2_with_the_usage(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, message = USAGE_ERRORS[command]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Usage:" in result.stderr
    assert os.listdir(tmp_path) == []


# -- Ctrl-C: exit 130, one line, nothing half-written ----------------------------------------------

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# command line -> the function it calls (patched to raise KeyboardInterrupt there)
INTERRUPTED = {
    "prepare": (["prepare", "shapes", "primary", "s.beton"], "loaders.sources.read_source"),
    "train": (["train", "--preset", "demo", "--device", "cpu", "--out", "run"], "engine.trainer.train"),
    "eval": (["eval", "model.safetensors", "--test", "t.npz", "--device", "cpu"],
             "engine.evaluation.runner.run_evaluation"),
    "export": (["export", "run"], "engine.export.export_robustbench"),
    "pseudo-label": (["pseudo-label", "run", "a.beton", "o.beton", "--all"], "engine.pseudo_label.pseudo_label"),
    "analyze": (["analyze", "run"], "studies.analysis.report.write_analysis"),
    "demo": (["demo", "--out", "demo", "--device", "cpu"], "cli.demo_cmd._default_data"),
    "info": (["info"], "cli.info_cmd.probe"),
    "bench step": (["bench", "step", "--device", "cpu"], "benchmarks.step.run"),
    "bench loader": (["bench", "loader"], "benchmarks.loader.run"),
    "bench kernels": (["bench", "kernels"], "benchmarks.kernels.run"),
    "bench eval": (["bench", "eval"], "benchmarks.eval.run"),
    "bench ddp": (["bench", "ddp"], "benchmarks.ddp.run"),
}


@pytest.mark.parametrize("command", INTERRUPTED)
def test_ctrl_c_exits_130_with_one_line(command, tmp_path, monkeypatch):
    args, target = INTERRUPTED[command]
    module, _, name = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), name, _interrupt)
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "written whole or not at all" in lines[0]
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*.beton*")) and not list(tmp_path.rglob("*.tmp"))


# -- which errors are the user's, and how they read ------------------------------------------------

def _export_raises(monkeypatch, err: BaseException):
    def export(*args, **kwargs):
        raise err
    monkeypatch.setattr(importlib.import_module("engine.export"), "export_robustbench", export)
    return invoke("export", "run")


def test_a_full_disk_names_the_file_and_the_fix(monkeypatch):
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/model.safetensors")
    result = _export_raises(monkeypatch, err)
    assert_user_error(result, "/data/run/model.safetensors: No space left on device", "free some space")


def test_a_missing_extra_is_a_user_error_with_a_hint(monkeypatch):
    result = _export_raises(monkeypatch, ModuleNotFoundError("No module named 'torch_tensorrt'", name="torch_tensorrt"))
    assert_user_error(result, "No module named 'torch_tensorrt'", "biamat-engine info")


@pytest.mark.parametrize("bug", [
    KeyError("clean_acc"),
    ValueError("weights must be a (C, K) tensor"),  # an internal check failing: not the user's to fix
    ImportError("cannot import name 'load' from 'engine.models'", name="engine.models"),  # ours: a bug
    RuntimeError("shape mismatch"),
])
def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch, bug):
    result = _export_raises(monkeypatch, bug)
    assert result.exception is bug  # not caught: Python prints the traceback
    assert "error:" not in result.stderr


@pytest.mark.parametrize("err", [
    InputError("--top-k-per-class 0: expected a positive count"),
    ConfigError("method.pi = 2: expected a value in [0, 1]"),
    SourceError("data_batch_1: expected 10000 rows, found 3"),
])
def test_an_input_error_exits_1_with_its_message(monkeypatch, err):
    result = _export_raises(monkeypatch, err)
    assert_user_error(result, str(err))


def test_every_engine_error_named_in_the_policy_exists():
    # ENGINE_ERRORS names classes by import path (importing them would import torch at start-up):
    # a class that moved must fail here, not silently lose its exit code 1.
    for path in ENGINE_ERRORS:
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception) and f"{cls.__module__}.{cls.__qualname__}" == path
        assert is_user_error(cls("x"))


def test_describe_puts_the_path_first_and_keeps_other_messages():
    assert describe(FileNotFoundError(errno.ENOENT, "No such file or directory", "a.beton")) == \
        "a.beton: No such file or directory (check the path)"
    assert describe(ConfigError("method.pi = 'abc': expected a float")) == "method.pi = 'abc': expected a float"
    assert not is_user_error(BrokenPipeError(errno.EPIPE, "Broken pipe"))  # click exits quietly itself


def test_flags_that_exclude_each_other_raise_clicks_usage_error():
    assert UsageError.__name__ == "UsageError" and issubclass(typer.BadParameter, UsageError)


def test_messages_are_printed_as_text_not_markup(monkeypatch):
    result = _export_raises(monkeypatch, InputError("expected [bold] in [0, 1]"))
    assert_user_error(result, "expected [bold] in [0, 1]")


# -- how the app is assembled ----------------------------------------------------------------------

def test_no_cli_module_imports_the_app():
    """Command modules are plain functions; only cli/app.py registers them. An import of cli.app
    from a command module was a cycle (and made `python -m cli.app` lose its commands)."""
    offenders = []
    for path in sorted((REPO / "cli").glob("*.py")):
        if path.name == "app.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            if "cli.app" in names:
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# The order `biamat-engine --help` lists the commands in (cli/app.py registers them so; Typer puts
# the groups of subcommands last).
COMMANDS = ["prepare", "train", "eval", "export", "robustify", "pseudo-label", "analyze", "study", "demo", "info",
            "bench", "theory"]


def _listed(help_text: str) -> list[str]:
    return re.findall(r"^│ (\w[\w-]*) ", help_text, flags=re.MULTILINE)


def test_help_lists_the_commands_in_the_intended_order():
    assert _listed(invoke("--help").stdout) == COMMANDS
    assert _listed(invoke("bench", "--help").stdout) == ["step", "loader", "kernels", "eval", "ddp"]


def test_help_starts_without_torch_and_lists_every_command_as_a_module():
    # `python -m cli.app` is the README's way to run a checkout; it used to lose every command.
    code = ("import sys, runpy; sys.argv = ['biamat-engine', '--help']\n"
            "try:\n    runpy.run_module('cli.app', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("False False")
    assert _listed(done.stdout) == COMMANDS
