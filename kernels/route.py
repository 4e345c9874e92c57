"""Confidence masking and per-sample loss routing (the BiaMAT selection)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def confidence_mask_torch(logits_pri: torch.Tensor, omega: float) -> tuple[torch.Tensor, torch.Tensor]:
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


def confidence_mask(logits_pri: torch.Tensor, omega: float, impl: str = "auto"):
    return confidence_mask_torch(logits_pri, omega)


def routed_loss(logits_pri, logits_aux, y_aux, high, impl: str = "auto"):
    return routed_loss_torch(logits_pri, logits_aux, y_aux, high)


def uniform_ce_floor(num_classes: int) -> float:
    """The smallest value soft-CE to uniform can take: log c (at uniform logits)."""
    return math.log(num_classes)
