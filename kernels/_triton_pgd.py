"""Triton kernel for the L-inf PGD update: one read of x_adv, grad and x_nat, one write."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _pgd_step_kernel(x_ptr, g_ptr, nat_ptr, out_ptr, n, step_size, eps, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    nat = tl.load(nat_ptr + offs, mask=mask).to(tl.float32)
    sign = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    x = x + step_size * sign
    x = tl.minimum(tl.maximum(x, nat - eps), nat + eps)  # project onto the eps-ball
    x = tl.minimum(tl.maximum(x, 0.0), 1.0)  # and onto the image box
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=mask)


def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, step_size: float, eps: float,
             out: torch.Tensor) -> torch.Tensor:
    """All four tensors share one dense memory layout (kernels.pgd arranges it), so the update
    runs over their flat storage whatever the memory format."""
    n = out.numel()
    if n:
        _pgd_step_kernel[(triton.cdiv(n, _BLOCK),)](x_adv, grad, x_nat, out, n, float(step_size), float(eps),
                                                    BLOCK=_BLOCK)
    return out
