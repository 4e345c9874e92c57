"""`biamat-engine bench ddp`: the report of a tiny two-process run, and its errors. No timing is
checked (benchmarks are never timed tests)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_bench_ddp_times_two_gloo_processes_and_writes_a_report(runner, tmp_path):
    out = tmp_path / "ddp.json"
    result = runner.invoke(app, [
        "bench", "ddp", "--world-sizes", "2", "--model", "wrn-10-1", "--batch", "4", "--aux-batch", "4",
        "--aux-classes", "7", "--size", "8", "--attack-steps", "1", "--steps", "1", "--warmup", "1",
        "--repeats", "1", "--device", "cpu", "--kernels", "torch", "--threads", "1", "--control", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["benchmark"] == "ddp" and report["backend"] == "gloo" and report["git_revision"]
    assert report["device"] and report["torch"] == torch.__version__
    row, control = report["rows"]
    assert (row["world_size"], row["ddp"], control["world_size"], control["ddp"]) == (2, True, 2, False)
    assert row["images_per_s"] > 0 and row["threads_per_process"] == 1
    assert row["images_per_s_per_rank"] == pytest.approx(row["images_per_s"] / 2)
    assert row["vs_control"] == pytest.approx(row["images_per_s"] / control["images_per_s"])
    assert row["omega"] is not None  # the warm-up step routed (there are no warm-up epochs here)
    assert row["efficiency"] is None and report["notes"]  # no 1-process row to compare with


@pytest.mark.parametrize("args, message", [
    (["--world-sizes", "1,x"], "expected a comma list of process counts"),
    (["--world-sizes", "0"], "positive process counts"),
    (["--device", "tpu"], "expected cpu | cuda"),
])
def test_bench_ddp_rejects_bad_options(runner, args, message):
    result = runner.invoke(app, ["bench", "ddp", *args])
    assert result.exit_code == 2 and message in _unboxed(result.output)


def _unboxed(output: str) -> str:
    """The text of rich's error box, its borders and line breaks removed."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPUs")
def test_bench_ddp_on_gpus_without_gpus_names_the_fix(runner):
    result = runner.invoke(app, ["bench", "ddp", "--device", "cuda", "--world-sizes", "1,2"])
    assert result.exit_code == 1 and "torch sees no CUDA device" in _unboxed(result.output)
