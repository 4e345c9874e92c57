"""A trained classifier's verdict on images: its predicted class and its confidence, the max
softmax of h_pri (`kernels.route.confidence_mask`, the score the BiaMAT selection routes with).

Eval mode, no gradients, fp32, batch by batch, on whatever device the model sits. The analysis's
Fig. 4 ranks auxiliary images by it (studies/analysis/confidence.py); `pseudo-label` keeps the most
confident images per predicted class (engine/pseudo_label.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from kernels.route import confidence_mask
from loaders.images import to_device_images


@dataclass(frozen=True)
class Scores:
    """One entry per image, in the order the images came."""

    predicted: np.ndarray
    """(N,) int64 argmax class."""
    confidence: np.ndarray
    """(N,) float32 max softmax."""


def score_batches(model: nn.Module, batches: Iterable[np.ndarray], device: torch.device,
                  on_batch: Callable[[int], None] | None = None) -> Scores:
    """Scores each (b, H, W, 3) uint8 batch of `batches` with `model`; `on_batch(b)` after each.
    The results stay on the device until the end, so the host prepares the next batch while the
    device works on this one."""
    model.eval()
    predicted, confidence = [], []
    with torch.inference_mode():
        for images in batches:
            logits = model(to_device_images(images, device)).float()  # (b, c)
            _, conf = confidence_mask(logits, 0.0)  # (b,) float32
            predicted.append(logits.argmax(dim=1))
            confidence.append(conf)
            if on_batch is not None:
                on_batch(len(images))
    if not predicted:
        return Scores(np.zeros(0, np.int64), np.zeros(0, np.float32))
    return Scores(torch.cat(predicted).cpu().numpy().astype(np.int64),
                  torch.cat(confidence).cpu().numpy().astype(np.float32))
