"""L-inf attacks: the eps-ball and [0, 1] hold, the loss goes up, no weight gradients are taken,
BatchNorm mode is an argument that is restored, and the losses match hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.attacks import bn_mode, check_unit_range, cw_margin_loss, kl_to, pgd, pgd_linf, trades_start

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EPS = 8 / 255


def small_net(seed: int = 0) -> nn.Module:
    """A fixed random conv net with BatchNorm: enough to attack, cheap to run."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    with torch.no_grad():  # non-trivial BN statistics, so train and eval mode differ
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def images(n: int = 16, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[0] = 0.0  # saturated images exercise the clamp to [0, 1]
    x[1] = 1.0
    return x


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_stays_in_the_eps_ball_and_the_unit_cube(loss):
    model, x = small_net(), images()
    y = torch.arange(len(x)) % 10
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=5, loss=loss)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv != x).any()


def test_pgd_raises_the_loss_beyond_random_noise():
    model, x = small_net(), images(32)
    with torch.no_grad():
        y = model(x).argmax(1)  # the clean prediction: its loss is the one to raise
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=10)
    noise = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    clean, adv, noisy = ce(model, x, y), ce(model, x_adv, y), ce(model, noise, y)
    assert (adv > clean).all()
    assert adv.mean() > noisy.mean() + 0.5 * (noisy.mean() - clean.mean()).abs()


def test_pgd_maximises_a_linear_objective_exactly():
    # For loss = sum(w * x), the maximiser in the ball is clamp(x + eps * sign(w), 0, 1): enough
    # signed steps from the clean point reach it, whatever the implementation of the step.
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=g)
    w = torch.randn(1, 3, 8, 8, generator=g)
    x_adv = pgd_linf(lambda xa: (xa * w).flatten(1).sum(1), x, eps=EPS, step_size=3 / 255, steps=4,
                     random_start=False)
    expected = (x + EPS * torch.sign(w)).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_pgd_keeps_channels_last():
    model = small_net().to(memory_format=torch.channels_last)
    x = images().contiguous(memory_format=torch.channels_last)
    y = torch.zeros(len(x), dtype=torch.long)
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert (x_adv - x).abs().max() <= EPS + 1e-6


def test_eps_zero_leaves_the_input_unchanged():
    model, x = small_net(), images()
    y = torch.zeros(len(x), dtype=torch.long)
    assert torch.equal(pgd(model, x, y, eps=0.0, step_size=2 / 255, steps=3), x)
    assert torch.equal(pgd(model, x, y, eps=0.0, step_size=2 / 255, steps=3, random_start=False), x)


def test_zero_steps_without_random_start_returns_the_input():
    x = images()
    assert torch.equal(pgd_linf(lambda xa: xa.flatten(1).sum(1), x, eps=EPS, step_size=1.0, steps=0,
                                random_start=False), x)


@pytest.mark.parametrize("bad", [lambda x: x * 255, lambda x: x - 0.5])
def test_inputs_outside_the_unit_range_are_refused(bad):
    model, x = small_net(), images()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pgd(model, bad(x), torch.zeros(len(x), dtype=torch.long))
    with pytest.raises(ValueError, match="unnormalised"):
        check_unit_range(bad(x))


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown PGD loss 'kl'"):
        pgd(small_net(), images(), torch.zeros(16, dtype=torch.long), loss="kl")


def test_attack_takes_no_weight_gradients():
    model, x = small_net(), images()
    y = torch.zeros(len(x), dtype=torch.long)
    for mode in ("eval", "train"):
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, mode=mode)
        assert all(p.grad is None for p in model.parameters())


def bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in model.named_buffers() if "running" in name]


@pytest.mark.parametrize("start_training", [True, False])
def test_bn_mode_is_used_during_the_attack_and_restored(start_training):
    model, x = small_net(), images()
    y = torch.zeros(len(x), dtype=torch.long)
    model.train(start_training)
    before = bn_stats(model)
    pgd(model, x, y, eps=EPS, steps=2, mode="eval")
    assert model.training is start_training
    assert all(torch.equal(a, b) for a, b in zip(before, bn_stats(model)))  # eval: stats untouched
    pgd(model, x, y, eps=EPS, steps=2, mode="train")
    assert model.training is start_training
    assert not all(torch.equal(a, b) for a, b in zip(before, bn_stats(model)))  # train: batch stats used


def test_bn_mode_restores_after_an_error_and_rejects_unknown_modes():
    model = small_net().train()
    with pytest.raises(RuntimeError, match="boom"):
        with bn_mode(model, "eval"):
            assert not model.training
            raise RuntimeError("boom")
    assert model.training
    with pytest.raises(ValueError, match="bn_mode must be one of train, eval, batch"):
        with bn_mode(model, "test"):
            pass


def test_bn_mode_batch_normalises_with_the_batch_and_leaves_the_running_statistics_alone():
    model = small_net().eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns, "the test net needs a BatchNorm"
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        train_logits = copy.deepcopy(model).train()(x)
        with pytest.raises(RuntimeError, match="boom"):
            with bn_mode(model, "batch"):
                assert model.training
                torch.testing.assert_close(model(x), train_logits)  # batch statistics, as in train mode
                raise RuntimeError("boom")
    assert not model.training and all(m.track_running_stats for m in bns)
    for m, saved in zip(bns, before):
        for k, v in m.state_dict().items():
            assert torch.equal(v, saved[k]), k


def test_cw_margin_loss_by_hand():
    logits = torch.tensor([
        [1.0, 3.0, 2.0],    # y=1 correct by margin 1 -> loss -1
        [5.0, 0.0, -1.0],   # y=1 wrong by 5 -> loss 5
        [100.0, 0.0, 0.0],  # y=1 wrong by 100 -> capped at kappa = 50
        [0.0, 0.0, 80.0],   # y=2 correct by 80 -> -80
    ])
    y = torch.tensor([1, 1, 1, 2])
    assert cw_margin_loss(logits, y).tolist() == [-1.0, 5.0, 50.0, -80.0]
    assert cw_margin_loss(logits, y, kappa=2.0).tolist() == [-1.0, 2.0, 2.0, -80.0]


def test_kl_to_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    nat, adv = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    p, q = F.softmax(nat, 1), F.softmax(adv, 1)
    expected = (p * (p.log() - q.log())).sum(1)
    assert torch.allclose(kl_to(p, adv), expected, atol=1e-6)
    assert torch.allclose(kl_to(p, nat), torch.zeros(6), atol=1e-6)


def test_trades_start_is_a_small_gaussian_step_inside_the_cube():
    torch.manual_seed(0)
    x = images(64)
    start = trades_start(x)
    assert start.min() >= 0 and start.max() <= 1
    inside = (x > 0.01) & (x < 0.99)  # where the clamp does not bite
    delta = (start - x)[inside]
    assert math.isclose(float(delta.std()), 0.001, rel_tol=0.05)
    assert abs(float(delta.mean())) < 1e-4


def test_input_gradients_only_freezes_weights_for_the_block_and_restores_them():
    from engine.attacks import input_gradients_only

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].bias.requires_grad_(False)  # a frozen parameter stays frozen afterwards
    with pytest.raises(RuntimeError, match="boom"):
        with input_gradients_only(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def confident_net(margin: float) -> nn.Module:
    """small_net predicting class 3 for every input with a logit margin of about `margin`: the
    softmax deficit p - onehot is ~exp(-margin), the regime of a well-trained model's easy samples."""
    model = small_net()
    with torch.no_grad():
        model[-1].bias[3] += margin
    return model


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_the_attack_loss_scale_leaves_fp32_results_bit_identical(loss, monkeypatch):
    import engine.attacks as attacks

    assert math.log2(attacks.ATTACK_LOSS_SCALE).is_integer()  # a power of two: exact in every format
    model, x = small_net(), images()
    y = torch.arange(len(x)) % 10
    runs = []
    for scale in (1.0, attacks.ATTACK_LOSS_SCALE):  # the tuple is built before the first setattr
        monkeypatch.setattr(attacks, "ATTACK_LOSS_SCALE", scale)
        torch.manual_seed(0)
        runs.append(pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=5, loss=loss))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_fp16_pgd_moves_confident_samples(device, monkeypatch):
    # Under fp16 autocast (the V100 path) the unscaled input gradient of a confident sample
    # underflows to 0 and sign(0) leaves it where it is; the scaled loss moves every sample.
    import engine.attacks as attacks

    scale = attacks.ATTACK_LOSS_SCALE
    model = confident_net(16.0).to(device)
    x = images(16).clamp(0.1, 0.9).to(device)  # inside the cube: a step never clamps back
    y = torch.full((len(x),), 3, device=device)

    def moved(scale: float) -> torch.Tensor:
        monkeypatch.setattr(attacks, "ATTACK_LOSS_SCALE", scale)
        with torch.autocast(device, dtype=torch.float16):
            x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=1, random_start=False)
        assert torch.isfinite(x_adv).all()
        return (x_adv != x).flatten(1).any(1)  # (B,)

    unscaled = moved(1.0)
    if device == "cpu" and unscaled.all():
        pytest.skip("this CPU's fp16 autocast keeps the tiny gradients; the CUDA variant tests the scale")
    assert not unscaled.all(), "the test needs a model whose unscaled fp16 gradients underflow"
    assert moved(scale).all()
