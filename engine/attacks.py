"""L-inf attacks as explicit functions: PGD with any per-sample objective, TRADES-KL, CW margin.

Threat model `Linf`; eps, step size and steps are arguments (eps written as 8/255). Attack
gradients are taken with respect to the input only (`torch.autograd.grad(loss, x)`): the weight
gradients a `loss.backward()` would compute are never used, and skipping them saves about a
third of every attack step.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.pgd import pgd_step

LossFn = Callable[[torch.Tensor], torch.Tensor]

# The attack loss is multiplied by this before its input gradient is taken. Under fp16 autocast
# (the V100 path) the backward runs through fp16 activations, and a confidently classified
# sample's gradient (softmax p - onehot ~ 1e-6 and below) underflows to 0 there: sign(0) = 0 and
# PGD stops moving that sample. A power of two is exact in every float format, so in fp32 and
# bf16 (fp32's exponent range) the gradient is the unscaled one times 2^10 bit for bit and its
# sign, all PGD uses, is unchanged: applied always, no precision branch. 2^10 leaves fp16 a
# factor 64 of headroom below its 65504 maximum for a per-sample loss whose logit gradient is at
# most 1 (CE, KL, CW margin); GradScaler's first scale, 2^16 on a mean over 128 samples, is 2^9
# per sample.
ATTACK_LOSS_SCALE = 1024.0


def check_unit_range(x: torch.Tensor, what: str = "inputs") -> None:
    """Attacks are defined on images in [0, 1]; anything else is a caller's mistake."""
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{what} must lie in [0, 1] (got [{lo:.4f}, {hi:.4f}]): pass unnormalised images")


BN_MODES = ("train", "eval", "batch")


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Runs the block with BatchNorm in `mode`, restoring the model's mode after:

    - `train`: batch statistics, and every forward updates the running statistics;
    - `eval`: the running statistics;
    - `batch`: batch statistics, the running statistics left untouched (neither the mean and
      variance nor num_batches_tracked move). The reference AT attack runs so: TensorFlow's
      BatchNorm update ops run only with the train op, not with the attack's gradient calls.
    """
    if mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {mode!r}")
    was_training = model.training
    model.train(mode != "eval")
    # A BatchNorm that does not track running statistics normalises with the batch's in train
    # mode and is handed no buffers to update (torch's _BatchNorm.forward).
    frozen = [m for m in model.modules()
              if mode == "batch" and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True
        model.train(was_training)


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Switches the weights' requires_grad off for the block.

    `torch.autograd.grad(loss, [x])` alone skips weight gradients in eager mode, but a
    torch.compile'd backward graph is traced for every input that requires grad and computes
    them all; with the weights frozen, both modes do input-gradient work only.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def pgd_linf(
    loss_fn: LossFn,
    x_nat: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    start: torch.Tensor | None = None,
    kernel_impl: str = "auto",
) -> torch.Tensor:
    """Maximises `loss_fn(x_adv).sum()` over the L-inf ball of radius eps around x_nat.

    `loss_fn` maps a batch to per-sample losses (B,), so one call attacks samples with
    different objectives at once (the routed BiaMAT batch). Returns a detached tensor in
    [0, 1] within eps of x_nat.
    """
    x_nat = x_nat.detach()
    if start is not None:
        x_adv = start.detach().clamp(0.0, 1.0)
    elif random_start and eps > 0:
        x_adv = (x_nat + torch.empty_like(x_nat).uniform_(-eps, eps)).clamp_(0.0, 1.0)
    else:
        x_adv = x_nat.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(x_adv).sum() * ATTACK_LOSS_SCALE  # see ATTACK_LOSS_SCALE: fp16 underflow
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = pgd_step(x_adv.detach(), grad, x_nat, step_size, eps, impl=kernel_impl)
    return x_adv.detach()


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-sample CW loss to maximise: -max(z_y - max_{j != y} z_j, -kappa)."""
    logits = logits.float()
    correct = logits.gather(1, y[:, None]).squeeze(1)  # (B,)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)  # (B,)
    return -torch.clamp(correct - other, min=-kappa)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    loss: str = "ce",
    kappa: float = 50.0,
    random_start: bool = True,
    mode: str = "eval",
    kernel_impl: str = "auto",
) -> torch.Tensor:
    """Untargeted L-inf PGD on a classifier with cross-entropy (`ce`) or CW margin (`cw`) loss."""
    check_unit_range(x)
    if loss == "ce":
        objective = lambda xa: F.cross_entropy(model(xa).float(), y, reduction="none")  # noqa: E731
    elif loss == "cw":
        objective = lambda xa: cw_margin_loss(model(xa), y, kappa)  # noqa: E731
    else:
        raise ValueError(f"unknown PGD loss {loss!r}: expected 'ce' or 'cw'")
    with bn_mode(model, mode), input_gradients_only(model):
        return pgd_linf(objective, x, eps=eps, step_size=step_size, steps=steps,
                        random_start=random_start, kernel_impl=kernel_impl)


def kl_to(p_nat: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p_nat || softmax(logits_adv)), the TRADES divergence."""
    log_q = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_q, p_nat, reduction="none").sum(1)  # (B,)


def trades_start(x_nat: torch.Tensor) -> torch.Tensor:
    """TRADES starts from a tiny Gaussian perturbation: x + 0.001 * N(0, 1)."""
    return (x_nat + 0.001 * torch.randn_like(x_nat)).clamp_(0.0, 1.0)
