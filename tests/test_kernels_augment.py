"""crop_flip: every implementation against an independent numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import augment, dispatch

TRITON_ON_CPU = pytest.mark.skipif(
    not (dispatch.available("triton") and dispatch.triton_interpreter_on()),
    reason="Triton kernels on CPU need triton and TRITON_INTERPRET=1 (scripts/test.sh sets it)",
)
NEEDS_NUMBA = pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
ALL_IMPLS = ["torch", pytest.param("numba", marks=NEEDS_NUMBA), pytest.param("triton", marks=TRITON_ON_CPU)]


@pytest.fixture(autouse=True)
def _no_forced_impl(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def crop_flip_numpy(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32: zero-pad, crop at (dy, dx), mirror."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty((b, 3, h, w), np.float32)
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, dy:dy + h, dx:dx + w]
        if flip:
            crop = crop[:, ::-1]
        out[i] = crop.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return out


def _batch(b, h, w, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
    flips = torch.rand(b, generator=g) > 0.5
    return images, offsets, flips


def _check(impl, images, offsets, flips, pad):
    out = augment.crop_flip(images, offsets, flips, pad=pad, impl=impl)
    b, h, w, _ = images.shape
    assert out.shape == (b, 3, h, w) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    want = crop_flip_numpy(images.numpy(), offsets.numpy(), flips.numpy(), pad)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("b,h,w,pad", [(5, 7, 9, 4), (1, 8, 8, 4), (3, 6, 6, 0), (2, 5, 4, 6)])
def test_crop_flip_matches_numpy(impl, b, h, w, pad):
    _check(impl, *_batch(b, h, w, pad, seed=b * h + w), pad)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("corner", [0, 8])
def test_crop_flip_extreme_offsets_with_and_without_flip(impl, corner):
    images, _, _ = _batch(4, 6, 7, 4, seed=1)
    offsets = torch.full((4, 2), corner, dtype=torch.int64)
    flips = torch.tensor([True, False, True, False])
    _check(impl, images, offsets, flips, 4)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_crop_flip_strided_batch(impl):
    images, offsets, flips = _batch(8, 6, 6, 4, seed=2)
    _check(impl, images[::2], offsets[::2], flips[::2], 4)  # every other image: batch stride doubled


@pytest.mark.parametrize("impl", [pytest.param("numba", marks=NEEDS_NUMBA)])
@pytest.mark.parametrize("size", [32, 64])
def test_crop_flip_at_workload_size(impl, size):
    _check(impl, *_batch(64, size, size, 4, seed=size), 4)


def test_crop_flip_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\)"):
        augment.crop_flip(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.long),
                          torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="flips must be a bool"):
        augment.crop_flip(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.long),
                          torch.zeros(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_crop_flip_on_cuda():
    images, offsets, flips = _batch(256, 32, 32, 4, seed=3)
    out = augment.crop_flip(images.cuda(), offsets.cuda(), flips.cuda(), impl="triton")
    assert out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(out.cpu().numpy(), crop_flip_numpy(images.numpy(), offsets.numpy(),
                                                                      flips.numpy(), 4))
