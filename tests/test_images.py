"""loaders.images: the one uint8 -> float [0, 1] channels_last conversion, and the fused crop/flip
kernels held to it in their identity case (no padding, no shift, no flip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import augment, dispatch
from loaders.images import pixel_images, to_device_images, unit_images

TRITON_ON_CPU = pytest.mark.skipif(
    not (dispatch.available("triton") and dispatch.triton_interpreter_on()),
    reason="Triton kernels on CPU need triton and TRITON_INTERPRET=1 (scripts/test.sh sets it)",
)
NEEDS_NUMBA = pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")


@pytest.fixture(autouse=True)
def _no_forced_impl(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def pixels(n: int = 5, h: int = 7, w: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 255, 128)  # both ends of the range
    return images


def numpy_unit(images: np.ndarray) -> np.ndarray:
    """The independent reference: NCHW float32, a true float32 division by 255."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)


def test_unit_images_is_the_expression_it_replaced_and_channels_last():
    images = torch.from_numpy(pixels())
    x = unit_images(images)
    # What engine.data, the resident and the FFCV backends each wrote before it was shared.
    before = images.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, before) and x.stride() == before.stride()
    assert x.shape == (5, 3, 7, 6) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(x.numpy(), numpy_unit(pixels()))
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_unit_images_copies_so_a_reused_buffer_may_change_afterwards():
    buffer = torch.from_numpy(pixels())
    x = unit_images(buffer)
    kept = x.clone()
    buffer.zero_()  # FFCV refills its batch buffer for the next batch
    assert torch.equal(x, kept)


def test_a_strided_batch_still_comes_out_channels_last():
    images = torch.from_numpy(pixels(n=6))[::2].transpose(1, 2)  # every other sample, transposed
    x = unit_images(images)
    assert x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(x.numpy(), numpy_unit(images.numpy()))


def test_to_device_images_takes_any_host_array():
    images = pixels(n=8)
    gathered = images[[5, 1, 3]]  # the held-out subset is a fancy-indexed copy
    sliced = images[:, :, ::-1]  # a negative-stride view torch.from_numpy would refuse
    for host in (images, gathered, sliced):
        x = to_device_images(host, "cpu")
        assert x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(x.numpy(), numpy_unit(host))


def test_the_wrong_layout_is_refused_with_what_was_found():
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\).*float32"):
        unit_images(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\)"):
        unit_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("impl", ["torch", pytest.param("numba", marks=NEEDS_NUMBA),
                                  pytest.param("triton", marks=TRITON_ON_CPU)])
def test_crop_flip_without_padding_shift_or_flip_is_the_plain_conversion(impl):
    # The fused kernels convert inside their own loops (kernels may not import loaders); in
    # their identity case they must agree with the loaders' conversion bit for bit.
    images = torch.from_numpy(pixels(n=4, h=9, w=5))
    out = augment.crop_flip(images, torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, dtype=torch.bool),
                            pad=0, impl=impl)
    assert torch.equal(out, unit_images(images))
    assert out.is_contiguous(memory_format=torch.channels_last)


def all_levels() -> np.ndarray:
    """Every uint8 value once per channel: (1, 16, 16, 3), each channel 0..255 in its own order."""
    levels = np.arange(256, dtype=np.uint8)
    return np.stack([levels, levels[::-1], np.roll(levels, 85)], axis=-1).reshape(1, 16, 16, 3)


def identity_crop(images: torch.Tensor, impl: str) -> torch.Tensor:
    b = images.shape[0]
    return augment.crop_flip(images, torch.zeros(b, 2, dtype=torch.int64, device=images.device),
                             torch.zeros(b, dtype=torch.bool, device=images.device), pad=0, impl=impl)


@pytest.mark.parametrize("impl", ["torch", pytest.param("numba", marks=NEEDS_NUMBA),
                                  pytest.param("triton", marks=TRITON_ON_CPU)])
def test_every_level_is_the_correctly_rounded_quotient(impl):
    images = all_levels()
    expected = numpy_unit(images)
    np.testing.assert_array_equal(unit_images(torch.from_numpy(images)).numpy(), expected)
    np.testing.assert_array_equal(identity_crop(torch.from_numpy(images), impl).numpy(), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cuda_levels_are_bit_exact(impl):
    # CUDA rewrites `x / host_scalar` as `x * (1 / scalar)` (126 of the 256 levels one ulp off)
    # and Triton's `/` is the approximate div.full.f32: both conversions must avoid them.
    images = all_levels()
    expected = numpy_unit(images)
    on_gpu = torch.from_numpy(images).cuda()
    np.testing.assert_array_equal(unit_images(on_gpu).cpu().numpy(), expected)
    np.testing.assert_array_equal(identity_crop(on_gpu, impl).cpu().numpy(), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_conversion_matches_the_cpu_one():
    images = pixels(n=16, h=32, w=32)
    on_gpu = to_device_images(images, "cuda")
    assert on_gpu.is_cuda and on_gpu.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(on_gpu.cpu(), to_device_images(images, "cpu"))


def test_pixel_images_inverts_unit_images_and_rounds_to_the_nearest_level():
    images = pixels()
    assert np.array_equal(pixel_images(unit_images(torch.from_numpy(images))), images)
    x = torch.tensor([0.0, 0.4 / 255, 0.6 / 255, 1.0, 1.2, -0.1]).view(1, 3, 1, 2)  # (1, 3, 1, 2)
    assert pixel_images(x).tolist() == [[[[0, 1, 255], [0, 255, 0]]]]  # (1, 1, 2, 3), clamped
