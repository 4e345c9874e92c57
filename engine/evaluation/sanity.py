"""Checks to run before attacking a model, after AutoAttack's `checks.py` recommendations.

A failing check does not stop the evaluation: it becomes a warning in the report, because a
robust accuracy measured on a model that fails one of them is likely to be overestimated
(batch statistics or dropout at test time, softmax outputs that flatten the loss, a randomised
forward pass, or gradients that are zero: all forms of gradient masking).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class SanityWarning:
    code: str
    """Stable short name: `train-mode`, `probabilities`, `nondeterministic`, `zero-gradients`."""
    message: str
    """What was found and what to do about it."""

    def to_dict(self) -> dict:
        return asdict(self)


def check_eval_mode(model: nn.Module) -> SanityWarning | None:
    """The model (or any submodule) is in train mode: BatchNorm and dropout behave as in training."""
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if not training:
        return None
    shown = ", ".join(training[:3]) + (" ..." if len(training) > 3 else "")
    return SanityWarning(
        "train-mode",
        f"the model is in train mode ({len(training)} modules, e.g. {shown}): BatchNorm uses batch "
        "statistics and dropout is active; call model.eval() before evaluating it",
    )


def check_logits(model: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> SanityWarning | None:
    """Outputs that lie in [0, 1] or sum to one per row look like probabilities, not logits."""
    with torch.no_grad():
        out = model(x).float()  # (B, C)
    sums_to_one = bool(((out.sum(1) - 1).abs() < tol).all())
    in_unit = bool(((out >= -tol) & (out <= 1 + tol)).all())
    if not (sums_to_one or in_unit):
        return None
    found = "every row sums to 1" if sums_to_one else "every output lies in [0, 1]"
    return SanityWarning(
        "probabilities",
        f"the model's outputs look like probabilities ({found}): attacks need logits; remove the "
        "final softmax (a cross-entropy loss on probabilities gives vanishing gradients)",
    )


def check_deterministic(model: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> SanityWarning | None:
    """Two forward passes on the same inputs must agree; otherwise the defence is randomised."""
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    diff = float((first - second).abs().max()) if first.numel() else 0.0
    if diff <= tol * max(1.0, float(first.abs().max()) if first.numel() else 1.0):
        return None
    return SanityWarning(
        "nondeterministic",
        f"two forward passes on the same inputs differ (max |difference| {diff:.3g}): the model is "
        "randomised; evaluate it with expectation over transformation (AutoAttack version 'rand')",
    )


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SanityWarning | None:
    """Input gradients of the cross-entropy must not vanish, or gradient attacks learn nothing."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y, reduction="sum")
    if not loss.requires_grad:
        zero = torch.ones(len(x), dtype=torch.bool)
    else:
        (grad,) = torch.autograd.grad(loss, [x], allow_unused=True)
        zero = (torch.ones(len(x), dtype=torch.bool) if grad is None
                else grad.flatten(1).abs().amax(1) == 0)  # (B,)
    n_zero = int(zero.sum())
    if n_zero == 0:
        return None
    return SanityWarning(
        "zero-gradients",
        f"{n_zero} of {len(x)} inputs have an all-zero input gradient: gradient-based attacks cannot "
        "move them (gradient masking); check for non-differentiable operations such as rounding, "
        "argmax or detach in the forward pass, and rely on gradient-free attacks (Square) there",
    )


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[SanityWarning]:
    """All checks on a batch (x in [0, 1], (B, 3, H, W)); the mode check sees the model as given.

    The other checks run in eval mode, the mode every attack of the evaluation uses; the model's
    own mode is restored afterwards.
    """
    warnings = [check_eval_mode(model)]
    was_training = model.training
    model.eval()
    try:
        warnings += [check_logits(model, x), check_deterministic(model, x), check_gradients(model, x, y)]
    finally:
        model.train(was_training)
    return [w for w in warnings if w is not None]
