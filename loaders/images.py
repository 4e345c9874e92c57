"""The one uint8 -> float conversion of the loader contract: (N, H, W, 3) uint8 pixels become
(N, 3, H, W) float32 in [0, 1], channels_last.

Publishers, .beton files and the device-resident copies all hold pixels height-width-channel;
the model wants NCHW. Permuting the NHWC memory gives an NCHW view whose strides are already
channels_last, so the conversion never reorders bytes, and the channels-last convolutions read
it as is. Backends whose pipeline converts on its own (DALI's crop_mirror_normalize, the fused
crop/flip kernels of kernels.augment) produce the same values; tests hold them to this function.

Also here: the per-channel statistics of a dataset's pixels (`ChannelStats`), which `prepare`
writes into the manifest and the model normalises with.
"""

from __future__ import annotations

import numpy as np
import torch


def unit_images(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1], channels_last, on images' device.

    Always a new tensor: loaders that hand over a buffer they reuse (FFCV) rely on the copy."""
    if images.dim() != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be a uint8 (N, H, W, 3) batch, got {images.dtype} {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float()  # (N, 3, H, W); .float() keeps the NHWC strides
    # Divide by a 0-dim tensor on the images' device, not by the Python number: CUDA turns a
    # division by a host scalar into a multiply by its reciprocal, which rounds 126 of the 256
    # levels one ulp away from the true quotient the CPU, numpy and the fused kernels give.
    # torch.full is a fill kernel on the device: no host-to-device copy, no sync.
    x.div_(torch.full((), 255.0, device=x.device))
    return x.contiguous(memory_format=torch.channels_last)  # a no-op unless the input was strided


def to_device_images(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(N, H, W, 3) uint8 host array -> (N, 3, H, W) float32 in [0, 1] channels_last on `device`.

    The uint8 pixels cross to the device and are converted there: a quarter of the bytes of
    float32 on the host-to-device link."""
    return unit_images(torch.from_numpy(np.ascontiguousarray(images)).to(device))


def pixel_images(x: torch.Tensor) -> np.ndarray:
    """The inverse of `unit_images`: (N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8 host
    array, each value rounded to the nearest of the 256 levels (what a .beton stores)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be a (N, 3, H, W) batch, got {tuple(x.shape)}")
    pixels = x.detach().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)  # (N, 3, H, W)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).cpu().numpy())  # (N, H, W, 3)


class ChannelStats:
    """Exact per-channel mean and standard deviation of uint8 RGB pixels, taken chunk by chunk:
    each channel keeps a histogram of its 256 values, so no sum ever rounds, and the result is
    the same however the data is chunked. In [0, 1] units, the population std (ddof 0), as the
    published CIFAR-10 statistics (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616)."""

    _ROWS = 1 << 20  # pixels per bincount, so the int64 copy it makes stays at 8 MiB

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)

    def add(self, images: np.ndarray) -> None:
        """images: (N, H, W, 3) uint8."""
        flat = np.ascontiguousarray(images).reshape(-1, 3)  # (N*H*W, 3)
        for start in range(0, len(flat), self._ROWS):
            part = flat[start:start + self._ROWS]
            for c in range(3):
                self.counts[c] += np.bincount(part[:, c], minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]] | None:
        """([mean_r, mean_g, mean_b], [std_r, std_g, std_b]), or None when nothing was added."""
        n = self.counts.sum(axis=1)  # (3,)
        if not n.all():
            return None
        values = np.arange(256, dtype=np.float64) / 255.0
        mean = (self.counts * values).sum(axis=1) / n
        var = (self.counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
        return mean.tolist(), np.sqrt(var).tolist()


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]] | None:
    """Per-channel (mean, std) in [0, 1] units of (N, H, W, 3) uint8 images (`ChannelStats`)."""
    stats = ChannelStats()
    stats.add(images)
    return stats.mean_std()
