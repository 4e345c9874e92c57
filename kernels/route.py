"""Confidence masking and per-sample loss routing (the BiaMAT selection)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.dispatch import resolve


def confidence_mask_torch(logits_pri: torch.Tensor, omega: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: (high, conf) with conf = max softmax per row (float32), high = conf >= omega."""
    conf = torch.softmax(logits_pri.float(), dim=1).amax(dim=1)  # (B,)
    return conf >= omega, conf


def routed_loss_torch(
    logits_pri: torch.Tensor, logits_aux: torch.Tensor, y_aux: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """Reference: per-sample float32 loss; CE(logits_aux, y_aux) where high, soft-CE of
    logits_pri against the uniform distribution where low."""
    ce_high = F.cross_entropy(logits_aux.float(), y_aux, reduction="none")  # (B,)
    # soft-CE to uniform over c classes = logsumexp(z) - mean(z)
    lp = logits_pri.float()
    ce_uniform = torch.logsumexp(lp, dim=1) - lp.mean(dim=1)  # (B,)
    return torch.where(high, ce_high, ce_uniform)


def _backend(name: str):
    # The fast implementations live in their own modules so that triton and numba are only
    # imported when they are used.
    if name == "triton":
        from kernels import _triton_route as backend
    else:
        from kernels import _numba_route as backend
    return backend


def _check_logits(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or not t.is_floating_point() or t.shape[1] == 0:
        raise ValueError(f"{name} must be float logits of shape (B, classes) with classes >= 1, got {t.dtype} {tuple(t.shape)}")


def confidence_mask(logits_pri: torch.Tensor, omega: float | torch.Tensor, impl: str = "auto"):
    """(high, conf): conf (B,) float32 is the max softmax of each row of the primary logits
    (B, c), high (B,) bool is conf >= omega (compared in float32). Any float dtype in, one pass
    over the logits. omega may be a 0-dim tensor on the logits' device (the training step's)."""
    _check_logits("logits_pri", logits_pri)
    name = resolve(impl, logits_pri, "confidence_mask")
    if name == "torch":
        return confidence_mask_torch(logits_pri, omega)
    if name == "triton" and isinstance(omega, torch.Tensor):
        # The kernel takes omega as a number, and reading a device tensor back waits for the
        # device: compare on the device instead (a float32 compare, as the kernel's).
        _, conf = _backend(name).confidence_mask(logits_pri.detach(), 0.0)
        return conf >= omega, conf
    return _backend(name).confidence_mask(logits_pri.detach(), omega)


class _RoutedLoss(torch.autograd.Function):
    """Forward and backward as kernels; the forward keeps each row's log-sum-exp so that the
    backward reads each routed row once."""

    @staticmethod
    def forward(ctx, logits_pri, logits_aux, y_aux, high, name):
        backend = _backend(name)
        loss, lse = backend.routed_loss_forward(logits_pri.detach(), logits_aux.detach(), y_aux, high)
        ctx.save_for_backward(logits_pri, logits_aux, y_aux, high, lse)
        ctx.backend = backend
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        logits_pri, logits_aux, y_aux, high, lse = ctx.saved_tensors
        gpri, gaux = ctx.backend.routed_loss_backward(grad_loss, logits_pri, logits_aux, y_aux, high, lse)
        return gpri, gaux, None, None, None


def routed_loss(logits_pri, logits_aux, y_aux, high, impl: str = "auto"):
    """Per-sample float32 loss (B,): CE(logits_aux, y_aux) where high, soft-CE of logits_pri
    (B, c) against the uniform distribution where low. Differentiable w.r.t. both logits;
    gradients come back in the logits' dtype."""
    _check_logits("logits_pri", logits_pri)
    _check_logits("logits_aux", logits_aux)
    b = logits_pri.shape[0]
    if logits_aux.shape[0] != b or tuple(y_aux.shape) != (b,) or tuple(high.shape) != (b,):
        raise ValueError(
            f"routed_loss needs one row per sample: logits_pri {tuple(logits_pri.shape)}, logits_aux "
            f"{tuple(logits_aux.shape)}, y_aux {tuple(y_aux.shape)}, high {tuple(high.shape)}"
        )
    if high.dtype != torch.bool or y_aux.is_floating_point():
        raise ValueError(f"high must be bool and y_aux integer labels, got {high.dtype} and {y_aux.dtype}")
    name = resolve(impl, logits_pri, "routed_loss")
    if name == "torch":
        return routed_loss_torch(logits_pri, logits_aux, y_aux, high)
    return _RoutedLoss.apply(logits_pri, logits_aux, y_aux, high, name)


def uniform_ce_floor(num_classes: int) -> float:
    """The smallest value soft-CE to uniform can take: log c (at uniform logits)."""
    return math.log(num_classes)
