"""White-box evaluation attacks: invariants of PGD/CW robust accuracy and a plain-loop reference."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.attacks import pgd
from engine.evaluation.robust import accuracy, robust_mask


def _linear_model_and_data(n=32, seed=0):
    """A random linear classifier on 8x8 images, labelled with its own predictions (clean = 100%)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(n, 3, 8, 8)  # (N, 3, H, W)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # a few clean mistakes, so clean < 100%
    return model, x, y


class Constant(nn.Module):
    """Ignores its input: no attack can change its prediction."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + self.scale * x.flatten(1).sum(1, keepdim=True) * 0


@pytest.mark.parametrize("attack", ["pgd5", "cw5"])
def test_eps_zero_gives_clean(attack):
    model, x, y = _linear_model_and_data()
    clean = robust_mask(model, x, y, "clean")
    assert torch.equal(robust_mask(model, x, y, attack, eps=0.0, step_size=1 / 255), clean)


@pytest.mark.parametrize("attack", ["pgd5", "cw5"])
def test_robust_never_exceeds_clean_and_attack_bites(attack):
    model, x, y = _linear_model_and_data()
    clean = robust_mask(model, x, y, "clean")
    robust = robust_mask(model, x, y, attack, eps=4 / 255, step_size=1 / 255)
    assert not bool((robust & ~clean).any())  # robust points are a subset of the clean ones
    assert robust.sum() < clean.sum()  # and the attack does break some at this eps


def test_constant_model_keeps_clean():
    model = Constant([0.0, 3.0, 1.0])
    x, y = torch.rand(12, 3, 8, 8), torch.tensor([1, 0, 2] * 4)
    clean = robust_mask(model, x, y, "clean")
    for attack in ("pgd5", "cw5"):
        assert torch.equal(robust_mask(model, x, y, attack, eps=16 / 255), clean)
    assert int(clean.sum()) == 4


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_perturbation_stays_in_ball_and_unit_range(loss):
    model, x, y = _linear_model_and_data()
    x = x.clone()
    x[0] = 0.0
    x[1] = 1.0  # saturated images exercise the [0, 1] clamp
    eps = 8 / 255
    x_adv = pgd(model, x, y, eps=eps, step_size=3 / 255, steps=5, loss=loss)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) > eps / 2  # it did move


def _reference_pgd(model, x, y, eps, step_size, steps):
    """PGD written the plain way: loss.backward() on the input, sign step, project, clamp."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        with torch.no_grad():
            x_adv = x_adv + step_size * x_adv.grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def test_pgd_matches_plain_loop_reference():
    model, x, y = _linear_model_and_data()
    torch.manual_seed(7)
    ours = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=7, loss="ce")
    torch.manual_seed(7)  # the same random start
    reference = _reference_pgd(model, x, y, 8 / 255, 2 / 255, 7)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_restarts_only_remove_points_and_accuracy_agrees():
    model, x, y = _linear_model_and_data()
    torch.manual_seed(3)
    one = robust_mask(model, x, y, "pgd3", eps=3 / 255, step_size=1 / 255)
    torch.manual_seed(3)  # the first restart repeats the single run exactly
    three = robust_mask(model, x, y, "pgd3", eps=3 / 255, step_size=1 / 255, restarts=3)
    assert not bool((three & ~one).any())
    torch.manual_seed(3)
    assert accuracy(model, x, y, "pgd3", eps=3 / 255, step_size=1 / 255) == (int(one.sum()), len(x))


def test_train_mode_is_restored():
    model, x, y = _linear_model_and_data()
    model.train()
    robust_mask(model, x, y, "pgd2")
    assert model.training


def test_fgsm_is_one_signed_gradient_step_of_size_eps_from_the_clean_image():
    """`fgsm` (the paper's Table 6): x + eps * sign(grad of CE), clipped to [0, 1], no random
    start, so it is deterministic; for a linear model that is exactly the worst case of the ball."""
    from engine.evaluation.robust import parse_attack

    model, x, y = _linear_model_and_data()
    eps = 4 / 255
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), [x_req])
    x_fgsm = (x + eps * grad.sign()).clamp(0.0, 1.0)
    with torch.no_grad():
        expected = (model(x).argmax(1) == y) & (model(x_fgsm).argmax(1) == y)
    for restarts in (1, 3):
        assert torch.equal(robust_mask(model, x, y, "fgsm", eps=eps, step_size=1 / 255, restarts=restarts), expected)
    spec = parse_attack("FGSM")
    assert (spec.name, spec.steps, spec.loss, spec.random_start) == ("fgsm", 1, "ce", False)
    for bad in ("fgsm1", "pgd", "clean3", "fgm"):
        with pytest.raises(ValueError, match="expected clean, fgsm, pgdK or cwK"):
            parse_attack(bad)
