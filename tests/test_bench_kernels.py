"""`bench kernels` checks every implementation against the torch reference before timing it: a
deliberately wrong kernel fails its row (an error in the JSON, not a speed-up) and the command
exits 1; the rows that agree are still timed."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import benchmarks.kernels as bench
from kernels import augment, dispatch, pgd

pytestmark = [pytest.mark.usefixtures("torch_single_thread"),
              pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")]


@pytest.fixture
def small_workload(monkeypatch):
    """The benchmark at toy sizes; on the CPU its fast implementation is numba."""
    monkeypatch.setattr(bench, "BATCH", 5)
    monkeypatch.setattr(bench, "PRIMARY_CLASSES", (3,))
    monkeypatch.setattr(bench, "AUX_CLASSES", 7)
    monkeypatch.setattr(bench, "IMAGE_SIZES", (9,))
    monkeypatch.setattr(bench, "MIN_LOOP_SECONDS", 1e-4)


def _wrong_pgd_step(x_adv, grad, x_nat, step_size, eps, impl="auto"):
    return pgd.pgd_step_torch(x_adv, -grad, x_nat, step_size, eps)  # descends instead of ascending


def _raising_crop_flip(images, offsets, flips, pad=4, impl="auto"):
    raise RuntimeError("launch failed")


def test_every_row_agrees_and_is_timed_when_the_kernels_are_right(small_workload):
    report = bench.run(device="cpu", repeats=2, compile_reference=False)
    assert report["failed"] == []
    rows = report["rows"]
    assert {r["impl"] for r in rows} == {"torch", "numba"} and len(rows) == 10
    assert all(r["error"] is None and r["mean_us"] > 0 and r["speedup"] > 0 for r in rows)


def test_a_wrong_or_raising_kernel_fails_its_row_and_only_its_row(small_workload, monkeypatch):
    monkeypatch.setattr(pgd, "pgd_step", _wrong_pgd_step)
    monkeypatch.setattr(augment, "crop_flip", _raising_crop_flip)
    report = bench.run(device="cpu", repeats=2, compile_reference=False)
    failed = {(r["kernel"], r["impl"]): r for r in report["rows"] if r["error"]}
    assert set(failed) == {("pgd_step", "numba"), ("crop_flip", "numba")}
    assert "output 0 differs from the torch reference" in failed["pgd_step", "numba"]["error"]
    assert failed["crop_flip", "numba"]["error"] == "raised RuntimeError: launch failed"
    assert all(r["mean_us"] is None and r["speedup"] is None for r in failed.values())
    assert len(report["failed"]) == 2 and report["failed"][0].startswith("pgd_step 5x3x9x9 numba: ")
    timed = [r for r in report["rows"] if not r["error"]]
    assert len(timed) == 8 and all(r["mean_us"] > 0 for r in timed)
    assert "| pgd_step | 5x3x9x9 | numba | - | - | wrong: output 0 differs" in bench.format_table(report)


def test_disagreement_is_exact_for_masks_and_tolerant_for_floats():
    x = torch.rand(4, 3)
    assert bench.disagreement([x, x > 0.5], [x + 1e-7, x > 0.5]) is None
    assert "output 1 differs" in bench.disagreement([x, x > 0.5], [x, x <= 0.5])
    assert "output 0 differs" in bench.disagreement([x], [x + 1e-3])
    assert "dtype" in bench.disagreement([x], [x.double()])
    assert bench.disagreement([x, x], [x]) == "returned 1 outputs, the reference 2"


def test_the_command_writes_the_report_and_exits_1_naming_the_wrong_row(small_workload, monkeypatch, tmp_path):
    from cli.app import app

    monkeypatch.setattr(pgd, "pgd_step", _wrong_pgd_step)
    out = tmp_path / "kernels.json"
    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(
        app, ["bench", "kernels", "--device", "cpu", "--no-compile", "--repeats", "2", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "error: 1 kernel row(s) disagree with the torch reference" in result.output
    assert "pgd_step 5x3x9x9 numba" in result.output and "BIAMAT_KERNELS=torch" in result.output
    assert "Traceback" not in result.output
    report = json.loads(out.read_text())
    assert [r["impl"] for r in report["rows"] if r["error"]] == ["numba"] and len(report["failed"]) == 1
