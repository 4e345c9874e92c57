"""numba kernels (CPU) for the confidence test and the routed loss: prange over the batch.

Imported only when the numba implementation is chosen (see kernels.dispatch). Compiled on first
use and cached on disk (cache=True; numba reads NUMBA_CACHE_DIR). The kernels work on the
tensors' own memory through `Tensor.numpy()`; only fp16/bf16 logits are widened to float32
first, because numpy has no bfloat16 and numba no fast float16 arithmetic.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch


@numba.njit(cache=True, inline="always")
def _row_stats(z):
    """(max, sum of exp(z - max), sum of z) of one row, in one pass (online max)."""
    m = z[0]
    s = np.float32(1.0)
    total = z[0]
    for j in range(1, z.shape[0]):
        v = z[j]
        total += v
        if v > m:
            s = s * np.float32(math.exp(m - v)) + np.float32(1.0)
            m = v
        else:
            s += np.float32(math.exp(v - m))
    return m, s, total


@numba.njit(cache=True, parallel=True)
def _confidence_kernel(logits, omega, conf, high):
    for i in numba.prange(logits.shape[0]):
        _, s, _ = _row_stats(logits[i])
        conf[i] = np.float32(1.0) / s  # the max softmax is exp(m - m) / s
        high[i] = conf[i] >= omega


@numba.njit(cache=True, parallel=True)
def _routed_fwd_kernel(pri, aux, y, high, loss, lse):
    for i in numba.prange(pri.shape[0]):
        # Only the head that the sample is routed to is read.
        if high[i]:
            m, s, _ = _row_stats(aux[i])
            lse[i] = m + np.float32(math.log(s))
            loss[i] = lse[i] - aux[i, y[i]]
        else:
            m, s, total = _row_stats(pri[i])
            lse[i] = m + np.float32(math.log(s))
            loss[i] = lse[i] - total / np.float32(pri.shape[1])  # soft-CE to uniform


@numba.njit(cache=True, parallel=True)
def _routed_bwd_kernel(grad, pri, aux, y, high, lse, gpri, gaux):
    inv_c = np.float32(1.0 / pri.shape[1])
    for i in numba.prange(pri.shape[0]):
        g = grad[i]
        if high[i]:
            # d CE / d z = softmax(z) - onehot(y); no gradient to the primary head
            for j in range(aux.shape[1]):
                gaux[i, j] = g * np.float32(math.exp(aux[i, j] - lse[i]))
            gaux[i, y[i]] -= g
            gpri[i, :] = 0.0
        else:
            # d soft-CE(uniform) / d z = softmax(z) - 1/c
            for j in range(pri.shape[1]):
                gpri[i, j] = g * (np.float32(math.exp(pri[i, j] - lse[i])) - inv_c)
            gaux[i, :] = 0.0


def _f32(t: torch.Tensor) -> np.ndarray:
    # float32 tensors are used in place (strided views included); narrower floats are widened.
    return (t if t.dtype == torch.float32 else t.float()).detach().numpy()


def _labels(y: torch.Tensor) -> np.ndarray:
    return (y if y.dtype == torch.int64 else y.long()).numpy()


def confidence_mask(logits_pri: torch.Tensor, omega: float) -> tuple[torch.Tensor, torch.Tensor]:
    b = logits_pri.shape[0]
    conf = torch.empty(b, dtype=torch.float32)
    high = torch.empty(b, dtype=torch.bool)
    if b:
        _confidence_kernel(_f32(logits_pri), np.float32(omega), conf.numpy(), high.numpy())
    return high, conf


def routed_loss_forward(pri, aux, y, high) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse): per-row float32 loss and the log-sum-exp of the head each row used."""
    b = pri.shape[0]
    loss = torch.empty(b, dtype=torch.float32)
    lse = torch.empty(b, dtype=torch.float32)
    if b:
        _routed_fwd_kernel(_f32(pri), _f32(aux), _labels(y), high.numpy(), loss.numpy(), lse.numpy())
    return loss, lse


def routed_loss_backward(grad, pri, aux, y, high, lse) -> tuple[torch.Tensor, torch.Tensor]:
    b = pri.shape[0]
    gpri = torch.empty(pri.shape, dtype=torch.float32)
    gaux = torch.empty(aux.shape, dtype=torch.float32)
    if b:
        _routed_bwd_kernel(_f32(grad), _f32(pri), _f32(aux), _labels(y), high.numpy(), lse.numpy(),
                           gpri.numpy(), gaux.numpy())
    return gpri.to(pri.dtype), gaux.to(aux.dtype)
