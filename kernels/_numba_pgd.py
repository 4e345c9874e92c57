"""numba kernel (CPU) for the L-inf PGD update over the flat storage of dense tensors."""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, parallel=True)
def _pgd_step_kernel(x, g, nat, out, step_size, eps):
    # float32 throughout, with the step and radius rounded to float32 first as torch does, so
    # the result matches the reference bit for bit.
    for i in numba.prange(x.shape[0]):
        gi = g[i]
        v = x[i]
        if gi > 0:
            v = v + step_size
        elif gi < 0:
            v = v - step_size
        v = min(max(v, nat[i] - eps), nat[i] + eps)
        out[i] = min(max(v, np.float32(0.0)), np.float32(1.0))


def _flat32(t: torch.Tensor) -> np.ndarray:
    # A dense tensor's storage seen as one flat array, without a copy when it is float32.
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t.as_strided((t.numel(),), (1,)).numpy()


def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, step_size: float, eps: float,
             out: torch.Tensor) -> torch.Tensor:
    """All four tensors share one dense memory layout (kernels.pgd arranges it)."""
    if out.numel() == 0:
        return out
    target = out if out.dtype == torch.float32 else torch.empty_like(out, dtype=torch.float32)
    _pgd_step_kernel(_flat32(x_adv), _flat32(grad), _flat32(x_nat), _flat32(target),
                     np.float32(step_size), np.float32(eps))
    if target is not out:
        out.copy_(target)
    return out
