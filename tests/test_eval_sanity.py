"""Sanity checks before attacking, and the forward-only backends."""

import pytest
import torch
import torch.nn as nn

from engine.evaluation import runner
from engine.evaluation.backends import Backend, BackendUnavailable, make_backend, tensorrt_missing
from engine.evaluation.runner import EvalPlan, evaluate
from engine.evaluation.sanity import run_checks


def _linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()


def _data(model, n=16):
    x = torch.rand(n, 3, 8, 8)
    with torch.no_grad():
        return x, model(x).argmax(1)


class Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _linear()

    def forward(self, x):
        return self.net(x).softmax(1)


class Noisy(nn.Module):
    """A randomised defence: fresh noise on every forward, even in eval mode."""

    def __init__(self):
        super().__init__()
        self.net = _linear()

    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x))


class Rounded(nn.Module):
    """Quantises its input: the forward is piecewise constant, so input gradients are zero."""

    def __init__(self):
        super().__init__()
        self.net = _linear()

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


def _codes(model, x, y):
    return [w.code for w in run_checks(model, x, y)]


def test_healthy_model_passes_every_check():
    model = _linear()
    assert _codes(model, *_data(model)) == []


@pytest.mark.parametrize("model, code", [
    (_linear().train(), "train-mode"),
    (Softmaxed().eval(), "probabilities"),
    (Noisy().eval(), "nondeterministic"),
    (Rounded().eval(), "zero-gradients"),
])
def test_each_warning_fires_on_a_model_built_to_trigger_it(model, code):
    torch.manual_seed(1)
    x, y = _data(_linear())
    assert _codes(model, x, y) == [code]


def test_checks_restore_the_model_mode():
    model = _linear().train()
    run_checks(model, *_data(model))
    assert model.training


def test_warnings_reach_the_report():
    model = Softmaxed().eval()
    x, y = _data(model)
    report = evaluate(model, x, y, EvalPlan(attacks=("clean",), batch_size=8))
    assert [w["code"] for w in report["sanity_warnings"]] == ["probabilities"]
    assert "remove the final softmax" in report["sanity_warnings"][0]["message"]


def test_tensorrt_names_what_is_missing():
    with pytest.raises(BackendUnavailable) as err:
        make_backend(_linear(), "tensorrt", batch_size=8, image_shape=(3, 8, 8), device="cpu")
    message = str(err.value)
    assert "no CUDA device" in message  # asked for cpu: CUDA is missing whatever is installed
    assert any("CUDA" in m for m in tensorrt_missing(torch.device("cpu")))
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        assert "torch-tensorrt package is not installed" in message
        assert "pip install 'biamat-engine[tensorrt]'" in message
    assert "--backend eager" in message


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="expected one of eager, compile, tensorrt"):
        make_backend(_linear(), "onnx", batch_size=8, image_shape=(3, 8, 8), device="cpu")


def test_compile_backend_agrees_with_eager_and_pads_the_last_batch():
    model = _linear()
    x, y = _data(model, n=13)  # 13 = 8 + 5: the last batch is padded to the compiled shape
    backend = make_backend(model, "compile", batch_size=8, image_shape=(3, 8, 8), device="cpu")
    assert torch.equal(backend.predict(x), y)


def test_backend_mismatch_is_reported(monkeypatch):
    model = _linear()
    x, y = _data(model)

    def shifted_backend(model, name, **kwargs):  # an fp16 backend that gets every prediction wrong
        return Backend(name, "fp16", lambda inp: model(inp).roll(1, dims=1), 8, static_shape=False)

    monkeypatch.setattr(runner, "make_backend", shifted_backend)
    report = evaluate(model, x, y, EvalPlan(attacks=("clean",), backend="tensorrt", batch_size=8))
    assert report["backend"]["exact_clean_acc"] == 1.0
    assert report["backend"]["clean_acc"] == 0.0
    assert report["clean_acc"] == 1.0  # the reported figure is the exact model's
    assert [w["code"] for w in report["sanity_warnings"]] == ["backend-mismatch"]
