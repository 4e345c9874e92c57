"""The one uint8 -> float conversion of the loader contract: (N, H, W, 3) uint8 pixels become
(N, 3, H, W) float32 in [0, 1], channels_last.

Publishers, .beton files and the device-resident copies all hold pixels height-width-channel;
the model wants NCHW. Permuting the NHWC memory gives an NCHW view whose strides are already
channels_last, so the conversion never reorders bytes, and the channels-last convolutions read
it as is. Backends whose pipeline converts on its own (DALI's crop_mirror_normalize, the fused
crop/flip kernels of kernels.augment) produce the same values; tests hold them to this function.
"""

from __future__ import annotations

import numpy as np
import torch


def unit_images(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1], channels_last, on images' device.

    Always a new tensor: loaders that hand over a buffer they reuse (FFCV) rely on the copy."""
    if images.dim() != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be a uint8 (N, H, W, 3) batch, got {images.dtype} {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W); .float() keeps the NHWC strides
    return x.contiguous(memory_format=torch.channels_last)  # a no-op unless the input was strided


def to_device_images(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(N, H, W, 3) uint8 host array -> (N, 3, H, W) float32 in [0, 1] channels_last on `device`.

    The uint8 pixels cross to the device and are converted there: a quarter of the bytes of
    float32 on the host-to-device link."""
    return unit_images(torch.from_numpy(np.ascontiguousarray(images)).to(device))
