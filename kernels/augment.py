"""Padded random crop + horizontal flip of a uint8 batch into float channels-last."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.dispatch import resolve


def crop_flip_torch(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """images (B, H, W, 3) uint8; offsets (B, 2) int64 (dy, dx) in [0, 2*pad]; flips (B,) bool.

    Returns (B, 3, H, W) float32 in [0, 1], channels_last: crop of the zero-padded image at
    (dy, dx), mirrored left-right where flips is set."""
    b, h, w, c = images.shape
    # loaders.images.unit_images's conversion, restated: kernels may not import loaders, and
    # this reference spells out the math its fused twins share; tests/test_images.py holds the
    # identity crop of every implementation equal to unit_images.
    # Divided by a device tensor: CUDA multiplies by the reciprocal of a host scalar, one ulp
    # off the true quotient for 126 of the 256 levels (see unit_images).
    x = images.permute(0, 3, 1, 2).float().div_(torch.full((), 255.0, device=images.device))  # (B, 3, H, W)
    x = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=images.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)
    return out.permute(0, 3, 1, 2)  # channels_last view of a contiguous NHWC tensor


def crop_flip(images, offsets, flips, pad: int = 4, impl: str = "auto") -> torch.Tensor:
    """The reference's semantics in one pass over the batch (see crop_flip_torch). The fast
    kernels treat offsets outside [0, 2*pad] as reaching further into the zero padding."""
    if images.dim() != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be a uint8 (B, H, W, 3) batch, got {images.dtype} {tuple(images.shape)}")
    b = images.shape[0]
    if tuple(offsets.shape) != (b, 2) or offsets.is_floating_point():
        raise ValueError(f"offsets must be integer (dy, dx) pairs of shape ({b}, 2), got {offsets.dtype} {tuple(offsets.shape)}")
    if tuple(flips.shape) != (b,) or flips.dtype != torch.bool:
        raise ValueError(f"flips must be a bool tensor of shape ({b},), got {flips.dtype} {tuple(flips.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    name = resolve(impl, images, "crop_flip")
    if name == "torch":
        return crop_flip_torch(images, offsets, flips, pad)
    if name == "triton":
        from kernels import _triton_augment as backend
    else:
        from kernels import _numba_augment as backend
    return backend.crop_flip(images, offsets, flips, pad)
