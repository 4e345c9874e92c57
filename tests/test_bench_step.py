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


# Names as torch.cuda.get_device_name reports them on the GPUs DESIGN.md names.
V100, A100, H100_PCIE, H100_SXM = ("Tesla V100-SXM2-16GB", "NVIDIA A100-SXM4-40GB", "NVIDIA H100 PCIe",
                                   "NVIDIA H100 80GB HBM3")


def test_peak_table_knows_the_users_gpus_and_orders_them_as_their_generations():
    # The figures themselves are data-sheet numbers; what the lookup must get right is which
    # board a reported name is: each known, newer generations faster, and the H100 PCIe card
    # (lower clocks and power) not mistaken for the SXM board although both names say H100.
    peaks = [peak_flops(name) for name in (V100, A100, H100_PCIE, H100_SXM)]
    assert all(p is not None and p > 0 for p in peaks)
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    assert peak_flops(H100_SXM.lower()) == peak_flops(H100_SXM)  # drivers differ in case


def test_peak_table_leaves_an_unknown_gpu_out():
    assert peak_flops("NVIDIA GeForce RTX 3090") is None  # MFU is left out rather than guessed


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
    # `auto` is recorded as what it amounts to on this CPU (per kernel where the choices differ).
    assert {r["kernels"] for r in rows if r["impl"] == "engine"} == {dispatch.auto_for_device(torch.device("cpu")),
                                                                      "torch"}
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


def test_bench_step_rewrites_its_report_after_every_warm_up_and_round(monkeypatch, tmp_path):
    """A run cut short keeps what it measured: the JSON is rewritten after each row's warm-up
    (with its first-step seconds) and each timed round, marked partial until the last."""
    import copy

    import benchmarks.step as bench

    snapshots = []
    real_write = bench.write_report

    def record(report, out):
        snapshots.append(copy.deepcopy(report))
        real_write(report, out)

    monkeypatch.setattr(bench, "write_report", record)
    out = tmp_path / "step.json"
    bench.run(method="at", model_name="wrn-10-1", batch=2, aux_batch=2, aux_classes=7, size=8, steps=1, warmup=1,
              repeats=2, attack_steps=1, device="cpu", compile="off", kernels="torch", out=out)
    # 3 rows (engine, reference, naive) warmed one by one, then 2 rounds.
    assert [len(s["warmup"]) for s in snapshots] == [1, 2, 3, 3, 3]
    assert [len(s["rows"]) for s in snapshots] == [0, 0, 0, 3, 3]
    assert [s["complete"] for s in snapshots] == [False, False, False, False, True]
    assert "partial: 1/3 rows warm, 0/2 rounds timed" in snapshots[0]["notes"]
    assert [r["rounds"] for r in snapshots[3]["rows"]] == [1, 1, 1]
    assert all(w["first_step_seconds"] > 0 and w["graphs"] == 0 for w in snapshots[-1]["warmup"])
    import json

    assert json.loads(out.read_text())["complete"] is True


def test_bench_step_without_baselines_times_the_engine_rows_alone():
    from benchmarks.step import run

    report = run(method="trades", model_name="wrn-10-1", batch=2, aux_batch=2, aux_classes=7, size=8, steps=1,
                 warmup=1, repeats=1, attack_steps=1, device="cpu", compile="off", kernels="torch", baselines=False)
    assert [r["impl"] for r in report["rows"]] == ["engine"]
    assert report["rows"][0]["vs_reference"] is None and report["rows"][0]["vs_naive"] is None
    assert report["config"]["baselines"] is False


def test_bench_step_reports_mfu_against_a_measured_peak(monkeypatch):
    """MFU against the data sheet needs CUDA; against a measured rate it is model FLOPs / time / rate."""
    from benchmarks.step import run

    report = run(method="at", model_name="wrn-10-1", batch=2, aux_batch=2, aux_classes=7, size=8, steps=1,
                 warmup=1, repeats=1, attack_steps=1, device="cpu", compile="off", kernels="torch", baselines=False,
                 measured_peak=1e12)
    row = report["rows"][0]
    assert row["mfu"] is None
    assert row["mfu_measured_peak"] == pytest.approx(row["model_flops_per_step"] / row["step_seconds"] / 1e12)
    with pytest.raises(ValueError, match="measured peak"):
        run(method="at", model_name="wrn-10-1", device="cpu", measured_peak=float("nan"))


def test_bench_step_rows_compile_for_a_static_or_a_symbolic_batch_as_asked():
    """`--compile-dynamic false,true`: two engine rows whose compiled trunks were asked for what
    their settings say (torch.compile compiles lazily: building the rows compiles nothing)."""
    import benchmarks.step as bench

    base = build("wrn-10-1", 10, (7,))
    rows = bench.build_variants("at", base, device="cpu", n_pri=2, n_aux=2, size=8, aux_classes=7, aux_mode="biamat",
                                attack_steps=1, compile="on", precision="fp32", kernels="torch", seed=0,
                                compile_dynamic="auto,false,true", baselines=False)
    assert [r.settings["compile_dynamic"] for r in rows] == ["false", "false", "true"]  # one batch shape: auto is static
    assert [r.runtime.compile_dynamic for r in rows] == [False, False, True]
    assert "dynamic true" in rows[2].label
    off = bench.build_variants("at", base, device="cpu", n_pri=2, n_aux=2, size=8, aux_classes=7, aux_mode="biamat",
                               attack_steps=1, compile="off", precision="fp32", kernels="torch", seed=0, baselines=False)
    assert off[0].settings["compile_dynamic"] == "auto"  # nothing compiled: nothing to choose
