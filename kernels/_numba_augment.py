"""numba kernel (CPU) for the padded crop + flip of a uint8 NHWC batch into float32 NHWC."""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, parallel=True)
def _crop_flip_kernel(images, offsets, flips, pad, to_float, out):
    b, h, w, c = images.shape
    # One task per output row: a row is a contiguous W*3 run of the output.
    for task in numba.prange(b * h):
        i = task // h
        r = task % h
        src_r = r + offsets[i, 0] - pad
        for col in range(w):
            src_c = (w - 1 - col if flips[i] else col) + offsets[i, 1] - pad
            if 0 <= src_r < h and 0 <= src_c < w:
                for ch in range(c):
                    out[i, r, col, ch] = to_float[images[i, src_r, src_c, ch]]
            else:
                for ch in range(c):
                    out[i, r, col, ch] = 0.0  # the zero padding


# uint8 -> float32 in [0, 1] as a 256-entry table: a lookup is cheaper than a division, and the
# table holds the reference's values exactly (a true float32 division, not a multiply by 1/255).
_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    b, h, w, c = images.shape
    out = torch.empty((b, h, w, c), dtype=torch.float32)  # (B, H, W, 3)
    if out.numel():
        offsets = offsets if offsets.dtype == torch.int64 else offsets.long()
        _crop_flip_kernel(images.numpy(), offsets.numpy(), flips.numpy(), pad, _TO_FLOAT, out.numpy())
    return out.permute(0, 3, 1, 2)  # (B, 3, H, W), channels_last
