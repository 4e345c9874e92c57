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

from kernels._numba_math import FAST, POW2, exp_nonpos


@numba.njit(cache=True, fastmath=FAST, inline="always")
def _row_stats(z, pow2):
    """(max, sum of exp(z - max), sum of z) of one row. Two sweeps over a row that sits in L1
    vectorise, where a one-sweep online max would branch on every element."""
    m = z[0]
    total = np.float32(0.0)
    for j in range(z.shape[0]):
        m = max(m, z[j])
        total += z[j]
    s = np.float32(0.0)
    for j in range(z.shape[0]):
        s += exp_nonpos(z[j] - m, pow2)
    return m, s, total


@numba.njit(cache=True, parallel=True, fastmath=FAST)
def _confidence_kernel(logits, omega, pow2, conf, high):
    for i in numba.prange(logits.shape[0]):
        _, s, _ = _row_stats(logits[i], pow2)
        conf[i] = np.float32(1.0) / s  # the max softmax is exp(m - m) / s
        high[i] = conf[i] >= omega


@numba.njit(cache=True, parallel=True, fastmath=FAST)
def _routed_fwd_kernel(pri, aux, y, high, pow2, loss, lse):
    for i in numba.prange(pri.shape[0]):
        # Only the head that the sample is routed to is read.
        if high[i]:
            m, s, _ = _row_stats(aux[i], pow2)
            lse[i] = m + np.float32(math.log(s))
            loss[i] = lse[i] - aux[i, y[i]]
        else:
            m, s, total = _row_stats(pri[i], pow2)
            lse[i] = m + np.float32(math.log(s))
            loss[i] = lse[i] - total / np.float32(pri.shape[1])  # soft-CE to uniform


@numba.njit(cache=True, parallel=True, fastmath=FAST)
def _routed_bwd_kernel(grad, pri, aux, y, high, lse, pow2, gpri, gaux):
    inv_c = np.float32(1.0 / pri.shape[1])
    for i in numba.prange(pri.shape[0]):
        g = grad[i]
        if high[i]:
            # d CE / d z = softmax(z) - onehot(y); no gradient to the primary head
            for j in range(aux.shape[1]):
                gaux[i, j] = g * exp_nonpos(aux[i, j] - lse[i], pow2)
            gaux[i, y[i]] -= g
            gpri[i, :] = 0.0
        else:
            # d soft-CE(uniform) / d z = softmax(z) - 1/c
            for j in range(pri.shape[1]):
                gpri[i, j] = g * (exp_nonpos(pri[i, j] - lse[i], pow2) - inv_c)
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
        _confidence_kernel(_f32(logits_pri), np.float32(omega), POW2, conf.numpy(), high.numpy())
    return high, conf


def routed_loss_forward(pri, aux, y, high) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse): per-row float32 loss and the log-sum-exp of the head each row used."""
    b = pri.shape[0]
    loss = torch.empty(b, dtype=torch.float32)
    lse = torch.empty(b, dtype=torch.float32)
    if b:
        _routed_fwd_kernel(_f32(pri), _f32(aux), _labels(y), high.numpy(), POW2, loss.numpy(), lse.numpy())
    return loss, lse


def routed_loss_backward(grad, pri, aux, y, high, lse) -> tuple[torch.Tensor, torch.Tensor]:
    b = pri.shape[0]
    gpri = torch.empty(pri.shape, dtype=torch.float32)
    gaux = torch.empty(aux.shape, dtype=torch.float32)
    if b:
        _routed_bwd_kernel(_f32(grad), _f32(pri), _f32(aux), _labels(y), high.numpy(), lse.numpy(), POW2,
                           gpri.numpy(), gaux.numpy())
    return gpri.to(pri.dtype), gaux.to(aux.dtype)
