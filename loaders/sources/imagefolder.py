"""Any one-folder-per-class tree of images (JPEG, PNG, ...), centre-cropped square and resized.

Images are decoded in parallel worker processes and streamed in chunks, so a tree of millions
of files converts with bounded memory. Shared with `places365`, whose release is such a tree
(or a file list over one).
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from loaders.sources.base import ChunkedSource, SourceError, sha256_listing
from loaders.types import ArrayDataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
CHUNK = 2048


def load_image(path: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: the centred square crop resized with Pillow's antialiasing
    filter (a bicubic kernel widened by the reduction factor)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
        return np.asarray(img, dtype=np.uint8)


def _decode(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = job
    try:
        return load_image(path, size), None
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        return None, f"{type(err).__name__}: {err}"


def scan_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder; expected one sub-folder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SourceError(f"{root}: empty folder: expected one sub-folder of images per class")
    files = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise SourceError(f"{root / name}: empty class folder: expected images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend((p, label) for p in found)
    return classes, files


def stream_images(
    files: Sequence[tuple[Path, int]], class_names: list[str], size: int, name: str, root: Path,
    *, skip_bad: bool = False, workers: int = 1, meta: dict | None = None,
) -> ChunkedSource:
    """Decodes `files` (path, label) in order with `workers` processes, in chunks."""
    meta = dict(meta or {})
    meta["source_sha256"] = sha256_listing(root, [p for p, _ in files])
    meta["source_checksum_of"] = "listing (relative path and size of every image)"

    def chunks() -> Iterator[ArrayDataset]:
        skipped: list[str] = []
        jobs = [(str(p), size) for p, _ in files]
        labels = np.array([label for _, label in files], dtype=np.int64)
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_decode, jobs, chunksize=64) if pool else map(_decode, jobs)
            images, kept = [], []
            for i, (image, error) in enumerate(results):
                if image is None:
                    if not skip_bad:
                        raise SourceError(f"{jobs[i][0]}: unreadable image ({error}); expected JPEG/PNG (use --skip-bad to skip such files)")
                    skipped.append(jobs[i][0])
                    log.warning("skipping unreadable image %s (%s)", jobs[i][0], error)
                else:
                    images.append(image)
                    kept.append(i)
                if len(images) == CHUNK or (i == len(jobs) - 1 and images):
                    yield ArrayDataset(np.stack(images), labels[kept], class_names, name)
                    images, kept = [], []
        finally:
            if pool is not None:
                pool.terminate()
        meta["skipped"] = skipped

    count = None if skip_bad else len(files)  # skipping makes the final count unknown up front
    return ChunkedSource(chunks, class_names, size, name, count, meta)


def read_imagefolder(
    source: str | Path, split: str = "train", *, size: int = 32, skip_bad: bool = False, workers: int = 1,
) -> ChunkedSource:
    root = Path(source)
    if (root / split).is_dir():  # a root holding train/ and test/ trees
        root = root / split
    classes, files = scan_class_folders(root)
    return stream_images(files, classes, size, f"{Path(source).name}-{split}", root,
                         skip_bad=skip_bad, workers=workers, meta={"split": split})
