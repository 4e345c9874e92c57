"""Standard (non-adversarial) training end to end: tiny runs with the CIFAR ResNet-18 and a
WideResNet, the run files they leave, and `eval` attacking the standard model afterwards."""

from __future__ import annotations

import json

import pytest
import torch

from engine.evaluation.plan import EvalPlan
from engine.evaluation.runner import run_evaluation
from engine.models import load
from engine.trainer import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# 8 px images keep the 11 M-parameter ResNet-18 to about a second a step on one CPU thread.
RESNET_RUN = (
    "model.name=resnet-18", "method.name=standard",
    "data.primary=shapes:primary?n=32&size=8", "data.test=shapes:primary?n=16&size=8",
    "data.aux=shapes:aux?n=32&size=8", "data.batch_size=16", "data.aux_batch_size=16",
    "optim.epochs=1", "optim.lr=0.01", "eval.n=16", "eval.steps=1",
)


def test_a_tiny_resnet18_standard_run_trains_and_eval_attacks_it(tmp_path, tiny_train_config):
    cfg = tiny_train_config(*RESNET_RUN, "method.aux_mode=labels")
    (record,) = train(cfg, tmp_path)
    assert record["step"] == 2 and record["images"] == 2 * (16 + 16)
    assert record["loss"] > record["loss_pri"] > 0 and record["loss_high"] > 0  # both heads train
    assert record["loss_low"] == 0.0 and record["omega"] is None
    card = json.loads((tmp_path / "model.json").read_text())
    assert (card["architecture"], card["method"], card["aux_mode"]) == ("resnet-18", "standard", "labels")
    model = load(tmp_path)
    assert type(model).__name__ == "ResNet" and len(model.aux_fc) == 0
    report = run_evaluation(tmp_path, "shapes:primary?n=16&size=8",
                            EvalPlan(attacks=("clean", "pgd2"), eps=8 / 255, n=16, batch_size=16))
    assert report["attacks"]["pgd2"]["robust_acc"] <= report["clean_acc"]


def test_standard_training_learns_and_attack_settings_do_not_matter(tmp_path, tiny_train_config):
    # No attack: the attack section changes nothing in what trains (it only sets the eval's
    # eps), and a few epochs on the easy shapes lower the loss.
    base = ("method.name=standard", "data.aux=", "method.aux_mode=none", "optim.epochs=3", "eval.steps=0")
    a = train(tiny_train_config(*base), tmp_path / "a")
    b = train(tiny_train_config(*base, "attack.steps=7", "attack.eps=4/255"), tmp_path / "b")
    losses = [r["loss"] for r in a]
    assert losses == [r["loss"] for r in b]
    assert losses[-1] < losses[0]
    assert all(r["robust_acc"] == r["clean_acc"] for r in a)  # eval.steps = 0: no per-epoch attack
    state_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    state_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_compiled_mixed_precision_resnet18_standard_run_on_cuda(tmp_path, tiny_train_config):
    # The Table 5 configuration's code path: compiled trunk, bf16/fp16 autocast, channels-last.
    cfg = tiny_train_config(*RESNET_RUN, "method.aux_mode=biamat", "method.warmup_epochs=1", "optim.epochs=2",
                            "runtime.device=cuda", "runtime.compile=on")
    records = train(cfg, tmp_path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["omega"] is not None  # the selection ran after warm-up, on clean inputs
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert not [k for k in last["model"] if "_orig_mod." in k]
    assert load(tmp_path)(torch.rand(2, 3, 8, 8)).shape == (2, 10)
