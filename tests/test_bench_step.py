"""`bench step`: the analytic FLOP counts behind MFU, the forward-equivalents of each step, the
GPU peak table, and the command's report. (What the steps compute is checked against the
reference in tests/test_methods_vs_reference.py.)"""

from __future__ import annotations

import pytest
import torch

from benchmarks.step import analytic_forward_flops, peak_flops, step_forward_units
from engine.models import build
from kernels import dispatch


@pytest.mark.parametrize("name, size, gflop", [("wrn-28-10", 32, 10.49), ("wrn-34-10", 32, 13.32),
                                               ("wrn-16-10", 32, 4.82), ("wrn-16-10", 64, 19.30),
                                               ("resnet-18", 32, 1.11)])  # 0.56 GMAC, as usually quoted
def test_analytic_flops_match_published_figures(name, size, gflop):
    assert round(analytic_forward_flops(name, size, 10) / 1e9, 2) == gflop


@pytest.mark.parametrize("name, size", [("wrn-22-3", 24), ("resnet-18", 12)])
def test_analytic_flops_match_a_count_of_the_built_model(name, size):
    """Counts conv and linear MACs of the real module with hooks, for an odd configuration."""
    model = build(name, 7, (13,)).eval()
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs.append(out.numel() * k)
        else:
            macs.append(out.numel() * mod.in_features)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not any(m is h for h in model.aux_fc):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    assert analytic_forward_flops(name, size, 7) == 2 * sum(macs)


def test_forward_units_of_pgd10_at_are_the_design_figures():
    # DESIGN.md: about 23 forwards per example with input-only attack grads, 33 with backward().
    assert step_forward_units("at", "engine", 128, 0, 10, routed=False) / 128 == 23
    assert step_forward_units("at", "naive", 128, 0, 10, routed=False) / 128 == 33
    # TRADES reference pays a clean forward per attack step that the engine pays once.
    eng = step_forward_units("trades", "engine", 128, 0, 10, routed=False)
    ref = step_forward_units("trades", "reference", 128, 0, 10, routed=False)
    assert ref - eng == 128 * (10 - 1)


def test_peak_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops("Tesla V100-SXM2-16GB") == 125e12
    assert peak_flops("NVIDIA GeForce RTX 3090") is None


def test_bench_step_cli_writes_a_report(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    out = tmp_path / "step.json"
    result = CliRunner().invoke(app, [
        "bench", "step", "--method", "both", "--model", "wrn-10-1", "--batch", "4", "--aux-batch", "4",
        "--aux-classes", "7", "--size", "8", "--attack-steps", "1", "--steps", "1", "--warmup", "1", "--repeats", "2",
        "--device", "cpu", "--compile", "off", "--kernels", "auto,torch", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(out.read_text())
    assert report["benchmark"] == "step" and report["torch"] == torch.__version__ and report["git_revision"]
    rows = report["rows"]
    assert [(r["method"], r["impl"]) for r in rows] == [(m, i) for m in ("at", "trades")
                                                        for i in ("engine", "engine", "reference", "naive")]
    assert {r["kernels"] for r in rows if r["impl"] == "engine"} == {"numba" if dispatch.available("numba") else
                                                                      "torch", "torch"}
    for r in rows:
        assert r["images_per_s"] > 0 and r["mfu"] is None  # no MFU on a CPU
        assert r["omega"] is not None  # warm-up ran a routed step, which fixed omega
    assert next(r for r in rows if r["impl"] == "reference")["vs_reference"] == pytest.approx(1.0)


def test_bench_step_times_both_batchnorm_settings_for_at_and_one_trades_row():
    from benchmarks.step import run

    report = run(method="both", model_name="wrn-10-1", batch=2, aux_batch=2, aux_classes=7, size=8, steps=1,
                 warmup=1, repeats=1, attack_steps=1, device="cpu", compile="off", kernels="torch",
                 bn_stats="step,every_forward")
    engine = [(r["method"], r["bn_stats"]) for r in report["rows"] if r["impl"] == "engine"]
    assert engine == [("at", "step"), ("at", "every_forward"), ("trades", None)]
    assert report["config"]["bn_stats"] == "step,every_forward"


def test_bench_step_cudnn_rows_record_what_ran():
    """`--cudnn-benchmark off,on` doubles the engine rows; on a CPU autotuning cannot run, and the
    rows say so rather than what was asked."""
    from benchmarks.step import run

    report = run(method="at", model_name="wrn-10-1", batch=2, aux_batch=2, aux_classes=7, size=8, steps=1,
                 warmup=1, repeats=1, attack_steps=1, device="cpu", compile="off", kernels="torch",
                 cudnn_benchmark="off,on")
    engine = [r for r in report["rows"] if r["impl"] == "engine"]
    assert len(engine) == 2 and [r["cudnn_benchmark"] for r in engine] == [False, False]
    assert report["config"]["cudnn_benchmark"] == "off,on"


def test_bench_step_cli_rejects_a_bad_cudnn_choice():
    from typer.testing import CliRunner

    from cli.app import app

    result = CliRunner().invoke(app, ["bench", "step", "--cudnn-benchmark", "maybe"])
    assert result.exit_code == 2
    assert "expected off, on or off,on, got 'maybe'" in result.output


def test_bench_step_cli_rejects_a_bad_method():
    from typer.testing import CliRunner

    from cli.app import app

    result = CliRunner().invoke(app, ["bench", "step", "--method", "pgd"])
    assert result.exit_code == 2  # a usage error
    assert "expected at, trades or both, got 'pgd'" in result.output
