"""Datasets the DALI stream can pull from a batch at a time, for data larger than RAM.

`DaliStream` accepts either an `ArrayDataset` (every image decoded in host memory) or a
`StreamedDataset`: labels in memory (8 bytes a sample) and a `read(index)` callable that returns
only the images one batch needs. The DALI external source calls `read` once per batch, so the
resident set is the batches in flight (`prefetch_queue_depth` of them), not the dataset.

Typical use, with the images written once as an (N, H, W, 3) uint8 `.npy` file:

    data = StreamedDataset.from_npy("train_images.npy", labels, class_names)
    stream = DaliStream(data, batch_size=128, device="cuda", train=True, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kernels.errors import InputError
from loaders.types import ArrayDataset, DescribedDataset, check_label_range


@dataclass
class StreamedDataset(DescribedDataset):
    """An image-classification split whose pixels are read on demand."""

    read: Callable[[np.ndarray], np.ndarray]
    """Maps an (B,) int64 index array to the (B, H, W, 3) uint8 images, in that order."""
    labels: np.ndarray
    """(N,) int64 in [0, num_classes)."""
    class_names: list[str]
    """One name per class; its length is the class count."""
    image_size: int
    """H == W of every image."""
    name: str = "streamed"
    meta: dict = field(default_factory=dict)
    """Free-form facts about the data (split, related classes, ...), as in `ArrayDataset`."""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(np.int64, copy=False)
        if self.labels.ndim != 1:
            raise InputError(f"{self.name}: labels must be (N,), got shape {self.labels.shape}")
        check_label_range(self.labels, self.num_classes, self.name)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_npy(
        cls, images_path: str | Path, labels: np.ndarray, class_names: list[str],
        name: str | None = None,
    ) -> "StreamedDataset":
        """Streams the images of an (N, H, W, 3) uint8 `.npy` file through a memory map."""
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(
                f"{images_path}: expected (N, H, W, 3) uint8 images, got {images.shape} "
                f"{images.dtype}; save them with np.save(path, images_uint8_nhwc)"
            )
        if images.shape[1] != images.shape[2]:
            raise InputError(f"{images_path}: images must be square, got {images.shape[1:3]}")
        if len(images) != len(labels):
            raise InputError(f"{images_path}: {len(images)} images but {len(labels)} labels")
        return cls(_MemmapReader(images), labels, list(class_names), int(images.shape[1]),
                   name or Path(images_path).stem)


class _MemmapReader:
    """Reads rows of a memory-mapped array in ascending order, then restores the asked order,
    so a shuffled batch costs forward seeks on disk instead of random ones."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, index: np.ndarray) -> np.ndarray:
        ascending = np.argsort(index, kind="stable")
        rows = np.asarray(self.images[index[ascending]])  # (B, H, W, 3), now in memory
        out = np.empty_like(rows)
        out[ascending] = rows
        return out


def batch_reader(dataset: ArrayDataset | StreamedDataset) -> Callable[[np.ndarray], np.ndarray]:
    """The function that gathers one batch of images from either kind of dataset."""
    if isinstance(dataset, StreamedDataset):
        return dataset.read
    if isinstance(dataset, ArrayDataset):
        images = dataset.images
        return lambda index: images[index]
    raise TypeError(
        f"DaliStream needs an ArrayDataset or a StreamedDataset, got {type(dataset).__name__}"
    )


def image_shape(dataset: ArrayDataset | StreamedDataset) -> tuple[int, int]:
    """(H, W) of the dataset's images."""
    if isinstance(dataset, ArrayDataset):
        return int(dataset.images.shape[1]), int(dataset.images.shape[2])
    return dataset.image_size, dataset.image_size
