"""`biamat-engine export --format robustbench`: weights, card and README that reload exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli.app import app
from engine.export import export_robustbench, load_robustbench_export
from engine.models import build, model_card, primary_state_dict

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def make_run(tmp_path, normalization: str = "per-channel"):
    torch.manual_seed(0)
    if normalization == "per-image":
        model = build("wrn-10-2", 10, aux_classes=(7,), normalization="per-image")
    else:
        model = build("wrn-10-2", 10, aux_classes=(7,), mean=MEAN, std=STD)
    for m in model.modules():  # non-trivial BatchNorm statistics, so every buffer matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    save_file(primary_state_dict(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(model_card(model, "wrn-10-2")))
    (tmp_path / "config.toml").write_text(
        '[method]\nname = "at"\naux_mode = "biamat"\nalpha = 1.0\npi = 0.55\n'
        '[data]\nprimary = "cifar10.beton"\naux = ["imagenet32.beton"]\n[attack]\neps = "8/255"\n')
    (tmp_path / "eval.json").write_text(json.dumps({
        "threat_model": "Linf", "eps": "8/255", "n": 1000, "clean_acc": 0.8712,
        "attacks": {"pgd100": {"robust_acc": 0.5501}, "aa": {"robust_acc": 0.5123}},
        "autoattack_acc": 0.5123, "sanity_warnings": []}))
    return tmp_path, model


@pytest.fixture()
def run_dir(tmp_path):
    return make_run(tmp_path)


@pytest.fixture(params=["per-channel", "per-image"])
def any_run_dir(tmp_path, request):
    return make_run(tmp_path, request.param)


def test_exported_weights_reload_to_the_same_logits(run_dir):
    path, model = run_dir
    result = export_robustbench(path)
    weights = load_file(str(result.weights))
    assert "mu" not in weights and "sigma" not in weights
    assert not any(k.startswith("aux_fc.") for k in weights)
    assert "block1.layer.0.convShortcut.weight" in weights and "fc.weight" in weights

    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        # The RobustBench way: a WideResNet without normalisation (ours with identity buffers has
        # exactly RobustBench's modules and keys), normalisation in front as the README shows.
        plain = build("wrn-10-2", 10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
        missing, unexpected = plain.load_state_dict(weights, strict=False)
        assert sorted(missing) == ["mu", "sigma"] and unexpected == []
        norm = json.loads(result.card.read_text())["normalization"]
        mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
        assert torch.allclose(plain((x - mean) / std), expected, atol=1e-5)
        # The biamat-engine way.
        assert torch.allclose(load_robustbench_export(result.out_dir)(x), expected, atol=1e-5)


def test_card_and_readme_carry_training_and_evaluation(run_dir):
    path, _ = run_dir
    result = export_robustbench(path, path / "rb")
    card = json.loads(result.card.read_text())
    assert card["robustbench_architecture"] == {"class": "WideResNet", "depth": 10, "widen_factor": 2,
                                                "num_classes": 10, "sub_block1": False, "input_size": 32}
    assert card["normalization"]["mean"] == pytest.approx(MEAN)
    assert card["training"]["method.aux_mode"] == "biamat"
    assert card["training"]["data.aux"] == ["imagenet32.beton"]
    assert card["evaluation"]["robust_acc"] == {"pgd100": 0.5501, "aa": 0.5123}
    readme = result.readme.read_text()
    assert "WideResNet(depth=10, widen_factor=2, num_classes=10)" in readme
    assert "| aa | 51.23% |" in readme and "| clean | 87.12% |" in readme
    assert "| method.aux_mode | biamat |" in readme


def test_card_and_readme_say_what_a_fine_tuning_started_from(run_dir):
    from engine.run_dir import RunDir
    from engine.run_record import InitSource, RunRecord, write_run_record

    path, _ = run_dir
    assert json.loads(export_robustbench(path, path / "scratch").card.read_text())["started_from"] is None
    source = InitSource(file="/runs/pre/best.pt", epoch=65, sha256="ab" * 32, heads="new")
    write_run_record(RunDir(path), RunRecord(source))
    result = export_robustbench(path, path / "rb")
    assert json.loads(result.card.read_text())["started_from"] == {
        "file": "/runs/pre/best.pt", "epoch": 65, "sha256": "ab" * 32, "heads": "new"}
    assert f"Fine-tuned from `/runs/pre/best.pt` (epoch 65, sha256 {'ab' * 32}), with a new primary head." \
        in result.readme.read_text()


def test_an_export_card_without_the_normalisation_kind_is_named_with_the_fix(run_dir):
    path, _ = run_dir
    result = export_robustbench(path, path / "rb")
    card = json.loads(result.card.read_text())
    del card["normalization"]["kind"]  # as exports were written before the per-image kind
    result.card.write_text(json.dumps(card))
    with pytest.raises(ValueError, match="no normalization object with its kind\\); export the run again"):
        load_robustbench_export(result.out_dir)


def test_cli_export_and_its_errors(run_dir, tmp_path_factory):
    path, _ = run_dir
    out = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(app, ["export", str(path), "--format", "robustbench", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # .biamat.json: the record that makes the folder export's own (engine/outputs.py)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.json", "README.md", ".biamat.json"}

    bad = CliRunner().invoke(app, ["export", str(path), "--format", "onnx"])
    assert bad.exit_code == 2 and "unknown export format 'onnx'" in bad.output
    empty = tmp_path_factory.mktemp("empty")
    missing = CliRunner().invoke(app, ["export", str(empty)])
    assert missing.exit_code == 1 and "no model.safetensors" in missing.output


def test_the_readme_snippet_itself_gives_the_models_logits(any_run_dir, monkeypatch):
    """The README's loading code, executed as a user would copy it, against RobustBench's
    WideResNet (here: ours without the normalisation buffers, i.e. RobustBench's modules and
    keys). In train mode its BatchNorm would use batch statistics and the logits would drift."""
    import re
    import sys
    import types

    from engine.models import load
    from engine.models.wideresnet import WideResNet

    class RobustBenchWideResNet(WideResNet):
        def __init__(self, depth, widen_factor, num_classes):
            super().__init__(depth, widen_factor, num_classes)
            for name in ("mu", "sigma"):  # plain attributes: not in the state dict
                del self._buffers[name]
            self.mu, self.sigma = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)

    path, _ = any_run_dir
    result = export_robustbench(path)
    code = re.search(r"```python\n(.*?)```", result.readme.read_text(), re.S).group(1)
    fake = types.ModuleType("robustbench.model_zoo.architectures.wide_resnet")
    fake.WideResNet = RobustBenchWideResNet
    for name in ("robustbench", "robustbench.model_zoo", "robustbench.model_zoo.architectures"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.chdir(result.out_dir)
    namespace: dict = {}
    exec(code, namespace)
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](x), load(path)(x), atol=1e-5, rtol=1e-5)


def test_a_per_image_run_exports_its_standardisation_and_reloads_to_the_same_logits(tmp_path):
    path, model = make_run(tmp_path, "per-image")
    result = export_robustbench(path)
    norm = json.loads(result.card.read_text())["normalization"]
    assert norm["kind"] == "per-image" and norm["apply"] == "net(standardize(x))"
    weights = load_file(str(result.weights))
    assert "mu" not in weights and "sigma" not in weights
    readme = result.readme.read_text()
    assert "def standardize(x)" in readme and "(x - mean) / std" not in readme
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        reloaded = load_robustbench_export(result.out_dir)
        assert reloaded.normalization == "per-image"
        assert torch.equal(reloaded(x), model(x))


def test_export_never_writes_over_the_run_or_an_earlier_export(run_dir):
    path, _ = run_dir
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="is the run directory it reads"):
        export_robustbench(path, path)
    assert (path / "model.safetensors").read_bytes() == before
    export_robustbench(path)
    with pytest.raises(FileExistsError, match="earlier output of `biamat-engine export`: pass --overwrite"):
        export_robustbench(path)
    export_robustbench(path, overwrite=True)
    refused = CliRunner().invoke(app, ["export", str(path), "--out", str(path)])
    assert refused.exit_code == 1 and "is the run directory it reads" in refused.output


def test_a_resnet_run_is_refused_by_name_and_nothing_is_written(tmp_path):
    # RobustBench's export format is its WideResNet; a ResNet-18 run (Appendix B) says so.
    model = build("resnet-18", 10)
    save_file(primary_state_dict(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(model_card(model, "resnet-18")))
    with pytest.raises(ValueError, match="only WideResNet classifiers.*trained a ResNet"):
        export_robustbench(tmp_path)
    assert not (tmp_path / "robustbench").exists()
