"""The L-inf PGD update: signed step, projection onto the eps-ball, clamp to [0, 1]."""

from __future__ import annotations

import torch


def pgd_step_torch(x_adv, grad, x_nat, step_size: float, eps: float) -> torch.Tensor:
    x = x_adv + step_size * torch.sign(grad)
    x = torch.minimum(torch.maximum(x, x_nat - eps), x_nat + eps)
    return x.clamp_(0.0, 1.0)


def pgd_step(x_adv, grad, x_nat, step_size: float, eps: float, impl: str = "auto") -> torch.Tensor:
    return pgd_step_torch(x_adv, grad, x_nat, step_size, eps)
