"""The `concat` format: prepared .beton files joined into one dataset, for training on a merged
set (the paper's Appendix B, Table 5: cifar-A + cifar-B, cifar-A + cifar-C, all three).

The files must share their class list and image size; the result holds their images and labels
in the order given, and its meta records each file with its content digest and its own meta (a
part's split, a noise record), so the merged manifest says what went into it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loaders.sources.base import SourceError
from loaders.types import ArrayDataset


def read_concat(source: str) -> ArrayDataset:
    """SOURCE = `a.beton,b.beton[,...]` -> their images and labels, concatenated."""
    from loaders.beton import read_beton, read_manifest  # the .beton reader and writer's module

    paths = [Path(p.strip()) for p in str(source).split(",") if p.strip()]
    if len(paths) < 2:
        raise SourceError(f"concat: SOURCE {source!r} must name two or more .beton files joined by commas, "
                          "e.g. data/cifar-A.beton,data/cifar-B.beton")
    parts = []
    for path in paths:
        if path.suffix != ".beton" or not path.is_file():
            raise SourceError(f"concat: {path} is not a .beton file; write it with `biamat-engine prepare` first")
        parts.append((path, read_beton(path), read_manifest(path)))
    first_path, first, _ = parts[0]
    for path, data, _ in parts[1:]:
        if list(data.class_names) != list(first.class_names):
            raise SourceError(f"concat: {path} has classes {list(data.class_names)[:5]}..., {first_path} has "
                              f"{list(first.class_names)[:5]}...: only splits of one dataset can be joined")
        if data.image_size != first.image_size:
            raise SourceError(f"concat: {path} holds {data.image_size}px images, {first_path} "
                              f"{first.image_size}px: prepare them at one --size")
    meta = {"concat": [{"beton": str(path), "name": m.get("name"), "count": m.get("count"),
                        "content_sha256": m.get("content_sha256"), "meta": m.get("meta", {})}
                       for path, _, m in parts]}
    return ArrayDataset(np.concatenate([d.images for _, d, _ in parts]),
                        np.concatenate([d.labels for _, d, _ in parts]),
                        list(first.class_names), "+".join(d.name for _, d, _ in parts), meta)
