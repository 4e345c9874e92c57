"""`biamat-engine eval` end to end through Typer on a tiny WideResNet saved as safetensors + model.json."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli.app import app
from engine.evaluation.runner import resolve_eps
from engine.models import build, model_card, primary_state_dict


def _calibrated_wrn():
    """wrn-10-1 whose BatchNorm statistics come from random images, so predictions vary."""
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, aux_classes=(5,))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, 16, 16))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cli")
    model = _calibrated_wrn()
    save_file(primary_state_dict(model), str(root / "model.safetensors"))
    (root / "model.json").write_text(json.dumps(model_card(model, "wrn-10-1", eps="2/255")))
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        labels = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    np.savez(root / "test.npz", images=images, labels=labels)
    return root


def test_eval_writes_robustbench_style_report(saved):
    out = saved / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", str(saved / "model.safetensors"), "--test", str(saved / "test.npz"),
        "--attacks", "clean,pgd3,cw3,aa", "--aa-attacks", "apgd-ce", "--aa-iterations", "3",
        "--batch-size", "8", "--n", "10", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["threat_model"] == "Linf"
    assert report["eps"] == "2/255" and report["eps_value"] == pytest.approx(2 / 255)  # from model.json
    assert report["n"] == 10 and report["clean_acc"] == 1.0  # labels are the model's own predictions
    assert set(report["attacks"]) == {"pgd3", "cw3", "aa"}
    for entry in report["attacks"].values():
        assert 0.0 <= entry["robust_acc"] <= report["clean_acc"]
        assert entry["robust"] == round(entry["robust_acc"] * 10)
    assert report["autoattack_acc"] == report["attacks"]["aa"]["robust_acc"]
    assert report["robust_acc"] == min(e["robust_acc"] for e in report["attacks"].values())
    assert report["sanity_warnings"] == [] and report["backend"]["name"] == "eager"
    assert report["model"].endswith("model.safetensors") and report["device"] == "cpu"
    assert "pgd3" in result.output and "apgd-ce" in result.output  # the table


def test_eps_option_overrides_the_card_and_accepts_fractions(saved):
    assert resolve_eps(saved / "model.safetensors", "8/255") == (pytest.approx(8 / 255), "option")
    assert resolve_eps(saved / "model.safetensors", None)[1].endswith("model.json eps")
    (saved / "run").mkdir(exist_ok=True)
    (saved / "run" / "config.toml").write_text('[attack]\neps = "4/255"\n')
    assert resolve_eps(saved / "run", None)[0] == pytest.approx(4 / 255)
    assert resolve_eps(saved / "nowhere.safetensors", None) == (pytest.approx(8 / 255), "default")


def test_step_size_comes_from_the_run_and_the_option_overrides_it(saved):
    from engine.evaluation.plan import resolve_step_size

    run = saved / "trades-run"
    run.mkdir(exist_ok=True)
    for name in ("model.safetensors", "model.json"):
        (run / name).write_bytes((saved / name).read_bytes())
    # A TRADES run: eps 0.031 and the reference TRADES evaluation's 0.003 step.
    (run / "config.toml").write_text('[attack]\neps = 0.031\n[eval]\nstep_size = 0.003\n')
    assert resolve_step_size(run, None) == (0.003, f"{run / 'config.toml'} [eval] step_size")
    assert resolve_step_size(run, "1/255") == (pytest.approx(1 / 255), "option")
    assert resolve_step_size(saved / "nowhere.safetensors", None) == (pytest.approx(2 / 255), "default")

    def report(*extra: str) -> dict:
        out = run / "eval.json"
        result = CliRunner().invoke(app, ["eval", str(run), "--test", str(saved / "test.npz"), "--attacks",
                                          "clean,pgd3,cw2", "--n", "6", "--batch-size", "8", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())

    ran = report()
    assert (ran["eps_value"], ran["step_size_value"], ran["step_size"]) == (0.031, 0.003, "0.003")
    assert ran["eps_source"].endswith("[attack] eps") and ran["step_size_source"].endswith("[eval] step_size")
    assert {k: (e["eps"], e["steps"], e["step_size"]) for k, e in ran["attacks"].items()} == {
        "pgd3": ("0.031", 3, "0.003"), "cw2": ("0.031", 2, "0.003")}
    overridden = report("--step-size", "2/255")
    assert (overridden["step_size"], overridden["step_size_source"]) == ("2/255", "option")
    assert overridden["attacks"]["pgd3"]["step_size"] == "2/255"


def test_a_card_without_a_run_carries_the_eval_step(saved, tmp_path):
    from engine.evaluation.plan import resolve_step_size

    card = json.loads((saved / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**card, "eval_step_size": 0.003}))
    (tmp_path / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    assert resolve_step_size(tmp_path / "model.safetensors", None)[0] == 0.003


def test_tensorrt_backend_stops_with_what_is_missing(saved):
    out = saved / "never.json"
    result = CliRunner().invoke(app, [
        "eval", str(saved / "model.safetensors"), "--test", str(saved / "test.npz"), "--attacks", "clean",
        "--backend", "tensorrt", "--out", str(out),
    ])
    assert result.exit_code == 1  # a valid request this machine cannot serve: not a usage error
    assert "tensorrt backend cannot run here" in result.output and "CUDA" in result.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--attacks", "clean,fgm"], "unknown attack 'fgm'"),
    (["--eps", "eight"], "cannot read 'eight'"),
    (["--aa-attacks", "apgd-ce,deepfool"], "unknown AutoAttack attack(s) deepfool"),
])
def test_bad_options_are_usage_errors(saved, args, message):
    result = CliRunner().invoke(app, ["eval", str(saved / "model.safetensors"), "--test",
                                      str(saved / "test.npz"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_eval_through_the_cli_runs_every_autoattack_attack(saved, tmp_path, monkeypatch):
    """The default path (channels-last test images from the loader) with the standard version's
    attacks, each one: the case that crashed inside AutoAttack."""
    pytest.importorskip("pyautoattack")
    from engine.evaluation import autoattack_runner

    make = autoattack_runner.make_adversary

    def few_queries(*args, **kwargs):  # Square's 5000 queries: minutes on a CPU, nothing more to learn
        adversary = make(*args, **kwargs)
        adversary.square.n_queries = 10
        return adversary

    monkeypatch.setattr(autoattack_runner, "make_adversary", few_queries)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", str(saved / "model.safetensors"), "--test", str(saved / "test.npz"), "--attacks", "clean,aa",
        "--aa-version", "plus", "--aa-iterations", "2", "--eps", "1/1000", "--n", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["complete"] and report["pending"] == []
    assert set(report["attacks"]["aa"]["robust_after"]) == {"apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"}


def test_each_finished_attack_is_in_eval_json_before_a_later_one_fails(saved, tmp_path, monkeypatch):
    from engine.evaluation import runner

    real = runner._attack_pass

    def cw_breaks(name, *args, **kwargs):
        if name.startswith("cw"):  # e.g. CW's batch runs out of memory: a user error, exit 1
            raise MemoryError("cw exploded")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runner, "_attack_pass", cw_breaks)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", str(saved / "model.safetensors"), "--test", str(saved / "test.npz"),
        "--attacks", "clean,pgd2,cw2", "--n", "6", "--out", str(out)])
    assert result.exit_code == 1 and "cw exploded" in result.output
    report = json.loads(out.read_text())
    assert not report["complete"] and list(report["attacks"]) == ["pgd2"] and report["pending"] == ["cw2"]
    assert report["clean_acc"] == 1.0 and report["eps_source"]


def test_an_unwritable_report_path_fails_before_the_evaluation(saved, tmp_path, monkeypatch):
    from engine.evaluation import runner

    monkeypatch.setattr(runner, "load_for_eval", lambda *a, **k: pytest.fail("evaluation started"))
    folder = tmp_path / "eval.json"
    folder.mkdir()  # a folder where the report file should go
    result = CliRunner().invoke(app, [
        "eval", str(saved / "model.safetensors"), "--test", str(saved / "test.npz"), "--out", str(folder)])
    assert result.exit_code == 1 and str(folder) in result.output
