"""Triton kernels for the confidence test and the routed loss (one program per row).

Imported only when the triton implementation is chosen (see kernels.dispatch). Rows are read
through their strides, so non-contiguous logits need no copy; every reduction runs in float32
whatever the logits' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns per block: a whole row for up to 1024 classes, otherwise an online loop over blocks.
_MAX_BLOCK = 1024


def _block(n_cols: int) -> int:
    return min(triton.next_power_of_2(max(n_cols, 1)), _MAX_BLOCK)


@triton.jit
def _row_stats(row_ptr, n_cols, stride_col, BLOCK: tl.constexpr):
    """Running max, sum of exp(z - max) and sum of z over one row, in one pass over it."""
    cols = tl.arange(0, BLOCK)
    # The first block always holds column 0, so the running max is finite from here on and
    # exp(m_old - m_new) never meets -inf - -inf.
    z = tl.load(row_ptr + cols * stride_col, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
    m = tl.max(z, axis=0)
    s = tl.sum(tl.exp(z - m), axis=0)
    total = tl.sum(tl.where(cols < n_cols, z, 0.0), axis=0)
    for start in range(BLOCK, n_cols, BLOCK):
        c = start + cols
        z = tl.load(row_ptr + c * stride_col, mask=c < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        total += tl.sum(tl.where(c < n_cols, z, 0.0), axis=0)
        m = m_new
    return m, s, total


@triton.jit
def _confidence_kernel(logits_ptr, conf_ptr, high_ptr, n_cols, stride_row, stride_col, omega, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    m, s, _ = _row_stats(logits_ptr + row * stride_row, n_cols, stride_col, BLOCK)
    conf = 1.0 / s  # the max softmax is exp(m - m) / s
    tl.store(conf_ptr + row, conf)
    tl.store(high_ptr + row, (conf >= omega).to(tl.int8))


@triton.jit
def _routed_fwd_kernel(
    pri_ptr, aux_ptr, y_ptr, high_ptr, loss_ptr, lse_ptr,
    n_pri, n_aux, s_pri_row, s_pri_col, s_aux_row, s_aux_col, s_y,
    BLOCK_PRI: tl.constexpr, BLOCK_AUX: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    is_high = tl.load(high_ptr + row) != 0
    # Only the head that the sample is routed to is read: low rows never touch the aux logits.
    if is_high:
        label = tl.load(y_ptr + row * s_y).to(tl.int64)
        m, s, _ = _row_stats(aux_ptr + row * s_aux_row, n_aux, s_aux_col, BLOCK_AUX)
        lse = m + tl.log(s)
        target = tl.load(aux_ptr + row * s_aux_row + label * s_aux_col).to(tl.float32)
        loss = lse - target
    else:
        m, s, total = _row_stats(pri_ptr + row * s_pri_row, n_pri, s_pri_col, BLOCK_PRI)
        lse = m + tl.log(s)
        loss = lse - total / n_pri  # soft-CE to uniform = logsumexp(z) - mean(z)
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _routed_bwd_kernel(
    grad_ptr, pri_ptr, aux_ptr, y_ptr, high_ptr, lse_ptr, gpri_ptr, gaux_ptr,
    n_pri, n_aux, s_grad, s_pri_row, s_pri_col, s_aux_row, s_aux_col, s_y,
    BLOCK_PRI: tl.constexpr, BLOCK_AUX: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    is_high = tl.load(high_ptr + row) != 0
    g = tl.load(grad_ptr + row * s_grad).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    cols_p = tl.arange(0, BLOCK_PRI)
    cols_a = tl.arange(0, BLOCK_AUX)
    gpri_row = gpri_ptr + row * n_pri  # gradients are written contiguous
    gaux_row = gaux_ptr + row * n_aux
    if is_high:
        # d CE / d z = softmax(z) - onehot(y); the primary head gets no gradient from this row
        label = tl.load(y_ptr + row * s_y).to(tl.int64)
        for start in range(0, n_aux, BLOCK_AUX):
            c = start + cols_a
            z = tl.load(aux_ptr + row * s_aux_row + c * s_aux_col, mask=c < n_aux, other=0.0).to(tl.float32)
            d = g * (tl.exp(z - lse) - tl.where(c == label, 1.0, 0.0))
            tl.store(gaux_row + c, d.to(gaux_ptr.dtype.element_ty), mask=c < n_aux)
        for start in range(0, n_pri, BLOCK_PRI):
            c = start + cols_p
            tl.store(gpri_row + c, tl.zeros([BLOCK_PRI], gpri_ptr.dtype.element_ty), mask=c < n_pri)
    else:
        # d soft-CE(uniform) / d z = softmax(z) - 1/c
        inv_c = 1.0 / n_pri
        for start in range(0, n_pri, BLOCK_PRI):
            c = start + cols_p
            z = tl.load(pri_ptr + row * s_pri_row + c * s_pri_col, mask=c < n_pri, other=0.0).to(tl.float32)
            d = g * (tl.exp(z - lse) - inv_c)
            tl.store(gpri_row + c, d.to(gpri_ptr.dtype.element_ty), mask=c < n_pri)
        for start in range(0, n_aux, BLOCK_AUX):
            c = start + cols_a
            tl.store(gaux_row + c, tl.zeros([BLOCK_AUX], gaux_ptr.dtype.element_ty), mask=c < n_aux)


def confidence_mask(logits_pri: torch.Tensor, omega: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = logits_pri.shape
    conf = torch.empty(b, dtype=torch.float32, device=logits_pri.device)
    high = torch.empty(b, dtype=torch.bool, device=logits_pri.device)
    if b:
        _confidence_kernel[(b,)](
            logits_pri, conf, high.view(torch.int8), c, logits_pri.stride(0), logits_pri.stride(1), float(omega),
            BLOCK=_block(c),
        )
    return high, conf


def routed_loss_forward(pri, aux, y, high) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse): per-row float32 loss and the log-sum-exp of the head each row used."""
    b, c = pri.shape
    k = aux.shape[1]
    loss = torch.empty(b, dtype=torch.float32, device=pri.device)
    lse = torch.empty(b, dtype=torch.float32, device=pri.device)
    if b:
        _routed_fwd_kernel[(b,)](
            pri, aux, y, high.view(torch.int8), loss, lse, c, k,
            pri.stride(0), pri.stride(1), aux.stride(0), aux.stride(1), y.stride(0),
            BLOCK_PRI=_block(c), BLOCK_AUX=_block(k),
        )
    return loss, lse


def routed_loss_backward(grad, pri, aux, y, high, lse) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = pri.shape
    k = aux.shape[1]
    gpri = torch.empty((b, c), dtype=pri.dtype, device=pri.device)
    gaux = torch.empty((b, k), dtype=aux.dtype, device=aux.device)
    if b:
        _routed_bwd_kernel[(b,)](
            grad, pri, aux, y, high.view(torch.int8), lse, gpri, gaux, c, k, grad.stride(0),
            pri.stride(0), pri.stride(1), aux.stride(0), aux.stride(1), y.stride(0),
            BLOCK_PRI=_block(c), BLOCK_AUX=_block(k),
        )
    return gpri, gaux
