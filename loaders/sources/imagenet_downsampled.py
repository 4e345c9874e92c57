"""Downsampled ImageNet (Chrabaszcz et al. 2017): ImageNet32x32 and ImageNet64x64.

The release ships pickled dicts `train_data_batch_1..10` and `val_data` (or the same names as
`.npz`), each with `data` (N, 3*S*S) uint8 in red/green/blue planes and 1-based `labels` in
1..1000. ImageNet64 is 15.7 GB of pixels, so the source streams one batch file at a time.

`imgnet100` / `imgnet900` are the paper's auxiliary sets: a seeded random split of the 1000
classes into 100 and the other 900, relabelled 0..K-1 in the order of the original class ids
(which are recorded in the manifest). Class names come from the devkit's `map_clsloc.txt`
(`n02119789 1 kit_fox`) when it lies in the source folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np

from loaders.sources.base import ChunkedSource, SourceError, planar_rows_to_hwc, read_text_lines
from loaders.sources.safe_pickle import safe_loads
from loaders.types import ArrayDataset

NUM_CLASSES = 1000
WHERE_TO_GET = "https://image-net.org/download-images.php (Downsampled ImageNet 32x32 / 64x64)"


def split_classes(subset: str, seed: int) -> np.ndarray:
    """1-based ImageNet class ids of `imgnet100` or `imgnet900` (sorted), from a seeded draw."""
    order = np.random.default_rng(seed).permutation(NUM_CLASSES) + 1
    chosen = order[:100] if subset == "imgnet100" else order[100:]
    return np.sort(chosen)


def find_batches(source: Path, split: str) -> list[Path]:
    """The split's batch files under `source` (pickled or .npz), in release order."""
    if split not in ("train", "test", "val"):
        raise SourceError(f"downsampled ImageNet: split must be 'train' or 'test' (val_data), got {split!r}")
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder; expected the downsampled ImageNet batches ({WHERE_TO_GET})")
    if split == "train":
        found = {p.name.removesuffix(".npz"): p for p in source.rglob("train_data_batch_*")}
        names = sorted(found, key=lambda n: int(n.rsplit("_", 1)[1]) if n.rsplit("_", 1)[1].isdigit() else 0)
        paths = [found[n] for n in names]
    else:
        paths = sorted(source.rglob("val_data")) + sorted(source.rglob("val_data.npz"))
        paths = paths[:1]
    if not paths:
        want = "train_data_batch_1..10" if split == "train" else "val_data"
        raise SourceError(f"{source}: no {want} (pickled or .npz) found; get them from {WHERE_TO_GET}")
    return paths


def _load_batch(path: Path, digest) -> tuple[np.ndarray, np.ndarray]:
    blob = path.read_bytes()
    digest.update(blob)
    try:
        if blob[:2] == b"PK":  # a zip archive: the .npz form
            import io

            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                return npz["data"], npz["labels"]
        batch = safe_loads(blob, str(path))
    except SourceError:
        raise
    except Exception as err:  # truncated files raise EOFError, UnpicklingError, BadZipFile, KeyError...
        raise SourceError(
            f"{path}: truncated or not a downsampled-ImageNet batch ({type(err).__name__}: {err}); "
            f"expected a pickled dict or .npz with 'data' and 'labels'"
        ) from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise SourceError(f"{path}: expected a dict with 'data' and 'labels', found {found}")
    return batch["data"], batch["labels"]


def class_names_for(source: Path, ids: np.ndarray) -> list[str]:
    maps = sorted(source.rglob("map_clsloc.txt")) if source.is_dir() else []
    names = {}
    if maps:
        for line in read_text_lines(maps[0]):
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                names[int(parts[1])] = parts[2]
    return [names.get(int(i), f"imagenet-{int(i)}") for i in ids]


def read_imagenet_downsampled(
    source: str | Path, split: str = "train", *, size: int = 64, subset: str | None = None, seed: int = 0,
) -> ChunkedSource:
    """Streams ImageNet32/64 (all classes, or the `imgnet100`/`imgnet900` subset)."""
    if size not in (32, 64):
        raise SourceError(f"downsampled ImageNet comes in 32 or 64 pixels, got --size {size}")
    source = Path(source)
    paths = find_batches(source, split)
    kept = split_classes(subset, seed) if subset else np.arange(1, NUM_CLASSES + 1)
    # Old id -> new label (or -1 when the class is not in the subset); index 0 is unused.
    relabel = np.full(NUM_CLASSES + 1, -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    class_names = class_names_for(source, kept)
    name = f"{subset or f'imagenet{size}'}-{split}"
    meta = {"split": split, "imagenet_class_ids": kept.tolist(), "files": [p.name for p in paths]}
    if subset:
        meta["split_seed"] = seed

    def chunks() -> Iterator[ArrayDataset]:
        digest = hashlib.sha256()
        for path in paths:
            data, labels = _load_batch(path, digest)
            images = planar_rows_to_hwc(np.asarray(data), size, str(path))
            labels = np.asarray(labels).reshape(-1)
            if len(labels) != len(images):
                raise SourceError(f"{path}: {len(images)} images but {len(labels)} labels")
            if not np.issubdtype(labels.dtype, np.integer) or (
                len(labels) and (labels.min() < 1 or labels.max() > NUM_CLASSES)
            ):
                lo, hi = (labels.min(), labels.max()) if len(labels) else (None, None)
                raise SourceError(f"{path}: 'labels' must be integers in [1, {NUM_CLASSES}] (1-based), found [{lo}, {hi}]")
            new = relabel[labels]
            keep = new >= 0
            yield ArrayDataset(images[keep], new[keep], class_names, name)
        meta["source_sha256"] = digest.hexdigest()

    return ChunkedSource(chunks, class_names, size, name, None, meta)
