"""model.aux_bn = separate: auxiliary images normalised by BatchNorms of their own, the primary's
untouched by them, evaluation and export on the primary's, RobustBench's key layout kept."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from engine.config import ConfigError
from engine.export import robustbench_state_dict
from engine.methods import METHODS, MethodState, StepContext
from engine.models import build, load, model_card, primary_state_dict
from engine.models.aux_bn import DomainBatchNorm2d, aux_rows

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _pair(seed: int = 0):
    """(separate, shared): the same weights, the separate model's auxiliary set a copy of its primary one."""
    torch.manual_seed(seed)
    shared = build("wrn-10-1", 10, (6,))
    separate = build("wrn-10-1", 10, (6,), aux_bn="separate")
    missing, unexpected = separate.load_state_dict(shared.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".aux_bn." in k for k in missing)
    return separate, shared


def _primary_stats(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k and ".aux_bn." not in k}


def _aux_stats(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k and ".aux_bn." in k}


def _images(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * scale).contiguous(memory_format=torch.channels_last)


def test_every_batchnorm_is_split_and_the_primary_keys_stay_robustbench_names():
    separate, shared = _pair()
    bns = [m for m in separate.modules() if isinstance(m, DomainBatchNorm2d)]
    assert len(bns) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in shared.modules())
    assert set(primary_state_dict(separate)) == set(primary_state_dict(shared))
    assert "block1.layer.0.bn1.aux_bn.running_mean" in separate.state_dict()


def test_primary_rows_and_statistics_ignore_the_auxiliary_rows():
    separate, shared = _pair()
    other = copy.deepcopy(separate)
    for m in (separate, other, shared):
        m.train()
    x_pri = _images(8, 1)
    with torch.no_grad(), aux_rows(separate, 8):
        f_a = separate.features(torch.cat([x_pri, _images(8, 2, 0.3)]))
    with torch.no_grad(), aux_rows(other, 8):
        f_b = other.features(torch.cat([x_pri, _images(8, 3)]))
    with torch.no_grad():
        f_alone = shared.features(x_pri)
    assert torch.allclose(f_a[:8], f_b[:8], atol=1e-6) and not torch.allclose(f_a[8:], f_b[8:])
    # The primary rows see exactly what a model trained on the primary batch alone sees...
    assert torch.allclose(f_a[:8], f_alone, atol=1e-5)
    # ...and the primary running statistics move as that model's do: by the primary rows only,
    # while the auxiliary ones follow the auxiliary rows.
    stats_a, aux_a, aux_b = _primary_stats(separate), _aux_stats(separate), _aux_stats(other)
    assert all(torch.allclose(stats_a[k], v, atol=1e-6) for k, v in _primary_stats(shared).items())
    assert all(torch.allclose(stats_a[k], v, atol=1e-6) for k, v in _primary_stats(other).items())
    assert any(not torch.allclose(aux_a[k], aux_b[k]) for k in aux_a)


def test_a_copy_of_the_primary_batch_as_auxiliary_half_gives_the_shared_forward():
    separate, shared = _pair()
    separate.train(), shared.train()
    x = _images(8, 4)
    both = torch.cat([x, x])
    with torch.no_grad(), aux_rows(separate, 8):
        f_sep = separate.features(both)
    with torch.no_grad():
        f_shared = shared.features(both)
    assert torch.allclose(f_sep, f_shared, atol=1e-5)


def test_without_a_split_every_row_uses_the_primary_batchnorm():
    separate, shared = _pair()
    for m in separate.modules():  # an auxiliary set that differs, to be sure it is not read
        if isinstance(m, DomainBatchNorm2d):
            m.aux_bn.running_mean.uniform_(-1, 1)
            m.aux_bn.weight.data.uniform_(0.5, 2)
    separate.eval(), shared.eval()
    x = _images(6, 5)
    with torch.no_grad():
        assert torch.allclose(separate(x), shared(x), atol=1e-6)
        with aux_rows(separate, 3):  # the split does change the auxiliary rows
            assert not torch.allclose(separate.features(x)[3:], shared.features(x)[3:])


def _at_step_stats(model, batch, bn_stats: str = "step"):
    from engine.config import AttackConfig, MethodConfig

    torch.manual_seed(7)  # the same random start for both batches
    ctx = StepContext(method=MethodConfig(), attack=AttackConfig(steps=2, bn_stats=bn_stats), in_warmup=True,
                      trunk=model.features)
    model.train()
    loss, _ = METHODS["at"](model, batch, MethodState(), ctx)
    return _primary_stats(model)


@pytest.mark.parametrize("bn_stats", ["step", "every_forward"])
def test_an_at_step_leaves_the_primary_statistics_to_the_primary_images(batch_factory, bn_stats):
    """Two batches with one primary half and different auxiliary halves, through the attack and
    the loss pass: with separate BatchNorm the primary statistics come out identical; with the
    shared one (the control) they differ."""
    a = batch_factory(n_pri=8, aux_sizes=(8,), aux_classes=(6,), size=16, seed=0)
    b = batch_factory(n_pri=8, aux_sizes=(8,), aux_classes=(6,), size=16, seed=0)
    b.x_aux = (b.x_aux * 0.2).contiguous(memory_format=torch.channels_last)
    separate, shared = _pair()
    sep_a, sep_b = _at_step_stats(copy.deepcopy(separate), a, bn_stats), _at_step_stats(copy.deepcopy(separate), b, bn_stats)
    assert all(torch.allclose(sep_a[k], sep_b[k], atol=1e-6) for k in sep_a)
    sh_a, sh_b = _at_step_stats(copy.deepcopy(shared), a, bn_stats), _at_step_stats(copy.deepcopy(shared), b, bn_stats)
    assert any(not torch.allclose(sh_a[k], sh_b[k], atol=1e-6) for k in sh_a)


def test_export_drops_the_auxiliary_batchnorm_and_loads_as_robustbench_wideresnet(tmp_path):
    separate, _ = _pair()
    for m in separate.modules():
        if isinstance(m, DomainBatchNorm2d):
            for bn in (m, m.aux_bn):
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    separate.eval()
    x = _images(4, 6)
    with torch.no_grad():
        expected = separate(x)
    weights = robustbench_state_dict(separate)
    assert not any(".aux_bn." in k or k.startswith("aux_fc.") for k in weights)
    plain = build("wrn-10-1", 10, mean=(0.0,) * 3, std=(1.0,) * 3).eval()  # RobustBench's modules and keys
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert sorted(missing) == ["mu", "sigma"] and unexpected == []
    with torch.no_grad():
        assert torch.allclose(plain(separate.normalize(x)), expected, atol=1e-5)

    # The run's model.safetensors (h_pri) loads as a plain model; a checkpoint keeps its auxiliary set.
    card = model_card(separate, "wrn-10-1", aux_classes=[6])
    save_file(primary_state_dict(separate), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(card))
    torch.save({"model": separate.state_dict(), "model_card": card}, tmp_path / "last.pt")
    from_weights, from_checkpoint = load(tmp_path / "model.safetensors"), load(tmp_path / "last.pt")
    assert not any(isinstance(m, DomainBatchNorm2d) for m in from_weights.modules())
    assert any(isinstance(m, DomainBatchNorm2d) for m in from_checkpoint.modules())
    with torch.no_grad():
        assert torch.allclose(from_weights(x), expected, atol=1e-5)
        assert torch.allclose(from_checkpoint(x), expected, atol=1e-5)


@pytest.mark.parametrize("overrides, key", [
    (("method.aux_mode=none",), "model.aux_bn"),
    (("data.aux=",), "model.aux_bn"),
    (("runtime.sync_bn=true",), "runtime.sync_bn"),
])
def test_separate_batchnorm_is_refused_where_it_has_nothing_to_do(tiny_train_config, overrides, key):
    with pytest.raises(ConfigError, match=key):
        tiny_train_config("model.aux_bn=separate", *overrides)


@pytest.mark.parametrize("method", ["at", "trades"])
def test_a_tiny_run_with_separate_batchnorm_trains_and_exports_the_primary(tiny_train_config, tmp_path, method):
    from safetensors.torch import load_file

    from engine.trainer import train

    records = train(tiny_train_config("model.aux_bn=separate", "optim.epochs=2", f"method.name={method}"), tmp_path)
    assert records[-1]["omega"] is not None and records[-1]["n_high_ratio"] is not None
    assert not any(".aux_bn." in k for k in load_file(str(tmp_path / "model.safetensors")))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["model_card"]["aux_bn"] == "separate"
    assert any(".aux_bn." in k for k in ckpt["model"])


def test_a_fine_tune_from_a_shared_source_starts_both_sets_from_its_batchnorm(tiny_train_config, tmp_path):
    from engine.trainer import Trainer, train

    train(tiny_train_config("data.aux=", "method.aux_mode=none", "optim.epochs=1"), tmp_path / "src")
    source = torch.load(tmp_path / "src" / "best.pt", weights_only=True)["model"]
    trainer = Trainer(tiny_train_config("model.aux_bn=separate", f"init.source={tmp_path / 'src'}"), tmp_path / "ft")
    state = trainer.model.state_dict()
    aux_keys = [k for k in state if ".aux_bn." in k]
    assert aux_keys and all(torch.equal(state[k], source[k.replace(".aux_bn.", ".")]) for k in aux_keys)
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith(("fc.", "aux_fc.")))
