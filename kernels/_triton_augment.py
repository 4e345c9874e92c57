"""Triton kernel for the padded crop + flip of a uint8 NHWC batch into float32 NHWC memory."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _crop_flip_kernel(img_ptr, off_ptr, flip_ptr, out_ptr, n, H, W, pad,
                      s_b, s_h, s_w, s_c, s_off_b, s_off_k, s_flip, BLOCK: tl.constexpr):
    # One lane per output element, enumerated in the output's (B, H, W, 3) memory order.
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    ch = idx % 3
    col = (idx // 3) % W
    row = (idx // (3 * W)) % H
    b = idx // (3 * W * H)
    dy = tl.load(off_ptr + b * s_off_b, mask=mask, other=0)
    dx = tl.load(off_ptr + b * s_off_b + s_off_k, mask=mask, other=0)
    flip = tl.load(flip_ptr + b * s_flip, mask=mask, other=0) != 0
    src_col = tl.where(flip, W - 1 - col, col) + dx - pad  # column in the unpadded image
    src_row = row + dy - pad
    inside = mask & (src_row >= 0) & (src_row < H) & (src_col >= 0) & (src_col < W)
    v = tl.load(img_ptr + b * s_b + src_row * s_h + src_col * s_w + ch * s_c, mask=inside, other=0)
    # The correctly rounded division gives the reference's float32 values exactly; Triton
    # compiles `/` to the approximate div.full.f32 (up to 2 ulp off), and 1/255 as a multiply
    # is one ulp off for 126 of the 256 levels.
    tl.store(out_ptr + idx, tl.math.div_rn(v.to(tl.float32), 255.0), mask=mask)


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    b, h, w, c = images.shape
    out = torch.empty((b, h, w, c), dtype=torch.float32, device=images.device)  # (B, H, W, 3)
    n = out.numel()
    if n:
        flips = flips.view(torch.uint8)
        _crop_flip_kernel[(triton.cdiv(n, _BLOCK),)](
            images, offsets, flips, out, n, h, w, pad, *images.stride(), *offsets.stride(), flips.stride(0),
            BLOCK=_BLOCK,
        )
    return out.permute(0, 3, 1, 2)  # (B, 3, H, W), channels_last
