"""The L-inf PGD update: signed step, projection onto the eps-ball, clamp to [0, 1]."""

from __future__ import annotations

import torch

from kernels.dispatch import resolve


def pgd_step_torch(x_adv, grad, x_nat, step_size: float, eps: float) -> torch.Tensor:
    x = x_adv + step_size * torch.sign(grad)
    x = torch.minimum(torch.maximum(x, x_nat - eps), x_nat + eps)
    return x.clamp_(0.0, 1.0)


def _is_dense(t: torch.Tensor) -> bool:
    """True when t's elements fill its memory span exactly once (any order of dimensions)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # The kernels walk flat memory, so every operand must be laid out like the output; a grad
    # that comes back in another memory format is copied once into that layout.
    if t.stride() == like.stride() or t.numel() <= 1:
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def pgd_step(x_adv, grad, x_nat, step_size: float, eps: float, impl: str = "auto") -> torch.Tensor:
    """x_adv + step_size * sign(grad), projected onto the L-inf ball of radius eps around x_nat
    and clamped to [0, 1], in one pass. Returns a new tensor with x_adv's shape, dtype and memory
    format (channels_last stays channels_last)."""
    if grad.shape != x_adv.shape or x_nat.shape != x_adv.shape:
        raise ValueError(
            f"pgd_step needs x_adv, grad and x_nat of one shape, got {tuple(x_adv.shape)}, {tuple(grad.shape)}, "
            f"{tuple(x_nat.shape)}"
        )
    if eps < 0 or step_size < 0:
        raise ValueError(f"pgd_step needs eps >= 0 and step_size >= 0, got eps={eps}, step_size={step_size}")
    name = resolve(impl, x_adv, "pgd_step")
    if name == "torch":
        return pgd_step_torch(x_adv, grad, x_nat, step_size, eps)
    x_adv = x_adv.detach()
    if not _is_dense(x_adv):
        x_adv = x_adv.contiguous()
    out = torch.empty_like(x_adv)  # dense input: same strides, so the memory format is kept
    grad = _same_layout(grad.detach(), out)
    x_nat = _same_layout(x_nat.detach(), out)
    if name == "triton":
        from kernels import _triton_pgd as backend
    else:
        from kernels import _numba_pgd as backend
    return backend.pgd_step(x_adv, grad, x_nat, step_size, eps, out)
