"""What a source hands the .beton writer: a whole ArrayDataset, or chunks of one streamed.

Big sources (ImageNet64, Places365) cannot sit in host memory, so they yield `ArrayDataset`
chunks that share one class list and one image size; the writer consumes them one at a time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from kernels.errors import InputError
from loaders.types import ArrayDataset


class SourceError(InputError):
    """Bad input data: the message names the file and what was expected there."""


def read_text_lines(path: Path) -> list[str]:
    """The lines of a source's text file (a class list, a file list); a SourceError naming it when
    it is not text, where Python's UnicodeDecodeError would name only a byte position."""
    try:
        return path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not a text file ({err.reason} at byte {err.start}); is it the right file?") from None


@dataclass
class ChunkedSource:
    """A dataset too big for memory, streamed as ArrayDataset chunks."""

    chunks: Callable[[], Iterator[ArrayDataset]]
    """Called once by the writer; every chunk has `class_names` and `image_size` below."""
    class_names: list[str]
    image_size: int
    name: str
    count: int | None = None
    """Total samples when known up front (lets the writer skip its spool file)."""
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def iter_chunks(data: ArrayDataset | ChunkedSource, rows: int = 4096) -> Iterator[ArrayDataset]:
    """Either kind of source as a stream of chunks."""
    if isinstance(data, ChunkedSource):
        yield from data.chunks()
        return
    for start in range(0, len(data), rows):
        yield data.subset(np.arange(start, min(start + rows, len(data))))


def sha256_files(paths: Iterable[Path]) -> str:
    """One digest over the bytes of several files, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def sha256_listing(root: Path, files: Iterable[Path]) -> str:
    """A cheap digest of a big image tree: relative path and size of every file, not the bytes
    (hashing 1.8M Places365 JPEGs would cost more than converting them)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{os.path.relpath(path, root)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """labels as int64, or a SourceError naming `where` when one falls outside the classes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(f"{where}: labels must be a 1-D integer array, found {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise SourceError(
            f"{where}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def planar_rows_to_hwc(data: np.ndarray, size: int, where: str) -> np.ndarray:
    """CIFAR/downsampled-ImageNet rows (N, 3*size*size uint8, R plane then G then B) -> (N, H, W, 3)."""
    expected = 3 * size * size
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != expected:
        shape = getattr(data, "shape", type(data).__name__)
        raise SourceError(f"{where}: expected 'data' of shape (N, {expected}) for {size}x{size} images, found {shape}")
    if data.dtype != np.uint8:
        raise SourceError(f"{where}: expected 'data' of dtype uint8, found {data.dtype}")
    return np.ascontiguousarray(data.reshape(-1, 3, size, size).transpose(0, 2, 3, 1))
