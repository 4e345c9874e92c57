"""Datasets derived from what a source read, for `prepare --classes`, `--n-per-class`,
`--grey`, `--parts` and `--uniform-noise`: a subset of the classes (relabelled 0..k-1) and a
seeded draw of N images per class; colour turned to grey; the seeded class-stratified split of
one set into disjoint parts, and uniform pixel noise (the paper's Appendix B, Table 5: CIFAR-10's training set split into
cifar-A, cifar-B and cifar-C of 25000, 12500 and 12500 images, uniform noise added to cifar-C).

All are deterministic functions of the data and a seed, and all say what they did in the
dataset's `meta`, which `write_beton` copies into the manifest. The subset comes first, then
the grey, so the parts and the noise apply to what they made.
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path
from typing import Iterator

import numpy as np

from loaders.sources.base import ChunkedSource, SourceError
from loaders.types import ArrayDataset

# Independent random streams from one --seed: the split and the noise never share draws, and
# neither shares the source's own (the imgnet100 class draw, the shapes generator).
_SPLIT_STREAM, _NOISE_STREAM, _SUBSET_STREAM = 1, 2, 3
PART_NAMES = string.ascii_uppercase


def parse_sizes(text: str) -> list[int]:
    """`25000,12500,12500` -> [25000, 12500, 12500]; a SourceError names the option otherwise."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(sizes) > len(PART_NAMES):
        raise SourceError(f"--parts {text!r}: expected positive part sizes joined by commas, e.g. 25000,12500,12500 "
                          f"(at most {len(PART_NAMES)} parts)")
    return sizes


def part_index(name: str, n_parts: int) -> int:
    """`B` (or `b`) -> 1: the part a --part name picks, checked against the number of parts."""
    names = PART_NAMES[:n_parts]
    if name.upper() not in names or len(name) != 1:
        raise SourceError(f"--part {name!r}: expected one of {', '.join(names)} (one per --parts size)")
    return names.index(name.upper())


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of the sample indices in which the classes are interleaved in
    proportion to their counts, so every run of consecutive positions holds each class in
    proportion to its share (within one sample per class): cutting it into consecutive pieces
    gives class-stratified parts of exact sizes."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    perm = rng.permutation(len(labels))
    y = labels[perm]
    counts = np.bincount(y)
    # Rank of each sample within its class, in permuted order.
    order_by_class = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), np.int64)
    rank[order_by_class] = np.arange(len(y)) - np.repeat(starts, counts)
    position = (rank + 0.5) / counts[y]  # where in (0, 1) each sample falls within its class
    # Ties (classes of equal counts at equal ranks) are broken by a seeded class order.
    class_tiebreak = rng.permutation(len(counts))[y]
    return perm[np.lexsort((class_tiebreak, position))]


def split_parts(data: ArrayDataset, sizes: list[int], seed: int) -> list[ArrayDataset]:
    """`data` split into disjoint class-stratified parts of `sizes` (they must add up to at
    most the whole set; images left over belong to no part), named NAME-A, NAME-B, ..., each
    recording the split in its meta."""
    if isinstance(data, ChunkedSource):
        raise SourceError(f"{data.name}: --parts needs a dataset that fits in memory (cifar10, cifar100, svhn, "
                          "shapes, or a .beton through the concat format); this format streams its images in chunks")
    if sum(sizes) > len(data):
        raise SourceError(f"--parts {','.join(map(str, sizes))}: {sum(sizes)} images asked for, "
                          f"{data.name} holds {len(data)}")
    order = stratified_order(data.labels, seed)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    record = {"sizes": list(sizes), "names": list(PART_NAMES[:len(sizes)]), "seed": seed, "of": len(data),
              "draw": "class-stratified: each part holds every class in proportion to its size "
                      "(within one image per class), from a seeded permutation"}
    parts = []
    for i, name in enumerate(PART_NAMES[:len(sizes)]):
        index = np.sort(order[bounds[i]:bounds[i + 1]])  # the source's order within a part
        part = data.subset(index, name=f"{data.name}-{name}")
        part.meta["parts"] = {**record, "part": name, "index": index.tolist()}
        parts.append(part)
    return parts


def parse_class_ids(text: str) -> list[int]:
    """`0,2,4` -> [0, 2, 4] (the order given is the new labels' order); a SourceError names the
    option otherwise."""
    try:
        ids = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise SourceError(f"--classes {text!r}: expected distinct class ids (labels, from 0) joined by commas, "
                          "e.g. 0,2,4")
    return ids


def select_classes(data: ArrayDataset | ChunkedSource, classes: list[int] | None, n_per_class: int | None,
                   seed: int) -> ArrayDataset | ChunkedSource:
    """The images of `classes` (all classes when None) relabelled 0..k-1 in the order given,
    `n_per_class` of each drawn with `seed` (all when None), in the source's order. The meta
    keeps the source's class ids and all its class names, so a subset and its complement
    (e.g. --classes 0,2,4 and --classes 1,3,5,6,7,8,9) can be told apart and joined again."""
    if classes is None and n_per_class is None:
        return data
    if isinstance(data, ChunkedSource):
        raise SourceError(f"{data.name}: --classes and --n-per-class need a dataset that fits in memory; "
                          "this format streams its images in chunks")
    ids = list(range(data.num_classes)) if classes is None else classes
    if max(ids) >= data.num_classes:
        raise SourceError(f"--classes {','.join(map(str, ids))}: {data.name} has classes 0..{data.num_classes - 1}")
    rng = np.random.default_rng([seed, _SUBSET_STREAM])
    picks = []
    for new, old in enumerate(ids):
        members = np.flatnonzero(data.labels == old)
        if n_per_class is not None:
            if len(members) < n_per_class:
                raise SourceError(f"--n-per-class {n_per_class}: class {old} ({data.class_names[old]}) of "
                                  f"{data.name} holds {len(members)} images")
            members = rng.choice(members, n_per_class, replace=False)
        picks.append(members)
    index = np.sort(np.concatenate(picks))
    relabel = np.full(data.num_classes, -1, np.int64)
    relabel[ids] = np.arange(len(ids))
    subset = data.subset(index)
    subset.labels = relabel[subset.labels]
    subset.class_names = [data.class_names[i] for i in ids]
    record = {"classes": ids, "source_class_names": list(data.class_names), "n_per_class": n_per_class,
              "seed": seed, "of": len(data)}
    if n_per_class is not None:
        record["index"] = index.tolist()  # the draw, to check two subsets are disjoint
    subset.meta["subset"] = record
    return subset


# ITU-R BT.601 luma weights, the grey of PIL's `convert("L")` and OpenCV's RGB2GRAY.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_LUMA = np.array(_LUMA_WEIGHTS, np.float32)


def to_grey(data: ArrayDataset | ChunkedSource) -> ArrayDataset | ChunkedSource:
    """`data` with every image turned to its BT.601 luma, rounded, in all three channels: grey
    images stored as RGB, as `prepare idx` stores MNIST-like data, so a colour set and a grey one
    (e.g. the shapes textures beside Fashion-MNIST) differ in content, not in colour mode."""
    def grey(chunk: ArrayDataset) -> ArrayDataset:
        luma = np.rint(chunk.images.astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
        return dataclasses.replace(chunk, images=np.repeat(luma[..., None], 3, axis=-1), meta=dict(chunk.meta))

    record = {"weights": list(_LUMA_WEIGHTS), "standard": "ITU-R BT.601 luma, rounded, replicated to 3 channels"}
    if isinstance(data, ChunkedSource):
        def chunks() -> Iterator[ArrayDataset]:
            yield from (grey(c) for c in data.chunks())

        return dataclasses.replace(data, chunks=chunks, meta={**data.meta, "grey": record})
    out = grey(data)
    out.meta["grey"] = record
    return out


def check_amplitude(amplitude: float) -> None:
    if not 0 < amplitude <= 255:
        raise SourceError(f"--uniform-noise {amplitude:g}: expected an amplitude in (0, 255] pixel levels")


def add_uniform_noise(data: ArrayDataset | ChunkedSource, amplitude: float, seed: int,
                      stream: int = 0) -> ArrayDataset | ChunkedSource:
    """`data` with independent noise drawn uniformly from [-amplitude, amplitude] pixel levels
    (images are uint8, 0-255) added to every pixel and channel, rounded and clipped to 0-255.
    The draw depends on the seed, `stream` (a part's index: each part draws its own noise,
    the same whether it is written alone or with the others) and the image order only, so the
    same command writes the same images again."""
    check_amplitude(amplitude)
    rng = np.random.default_rng([seed, _NOISE_STREAM, stream])

    def noisy(chunk: ArrayDataset) -> ArrayDataset:
        # Float32 noise, added in int16 after rounding: the uint8 images never wrap around.
        noise = rng.uniform(-amplitude, amplitude, chunk.images.shape).astype(np.float32)
        images = np.clip(chunk.images.astype(np.int16) + np.rint(noise).astype(np.int16), 0, 255).astype(np.uint8)
        return dataclasses.replace(chunk, images=images, meta=dict(chunk.meta))

    name = f"{data.name}-noise{amplitude:g}"
    record = {"amplitude": amplitude, "units": "pixel levels of 0-255 uint8 images", "seed": seed, "stream": stream,
              "distribution": "uniform on [-amplitude, amplitude], rounded, clipped to [0, 255]"}
    if isinstance(data, ChunkedSource):
        def chunks() -> Iterator[ArrayDataset]:
            yield from (noisy(c) for c in data.chunks())

        return dataclasses.replace(data, chunks=chunks, name=name, meta={**data.meta, "uniform_noise": record})
    out = noisy(data)
    out.name = name
    out.meta["uniform_noise"] = record
    return out


def part_path(out: Path, index: int) -> Path:
    """Where `prepare --parts` writes part `index` of OUT: OUT-A.beton, OUT-B.beton, ..."""
    return out.with_name(f"{out.stem}-{PART_NAMES[index]}{out.suffix}")


def derived_sets(data: ArrayDataset | ChunkedSource, out: Path, sizes: list[int] | None, part: str | None,
                 noise: float | None, seed: int, classes: list[int] | None = None,
                 n_per_class: int | None = None, grey: bool = False,
                 ) -> list[tuple[int, Path, ArrayDataset | ChunkedSource]]:
    """(part index, output path, dataset) for each file `prepare` writes: the whole set at OUT,
    every part at OUT-A.beton, OUT-B.beton, ..., or one `part` at OUT; with uniform noise added
    (each part its own noise stream, so a part's noise is the same written alone or with the others);
    all from the subset `classes` / `n_per_class` picks (see `select_classes`), grey if asked."""
    data = select_classes(data, classes, n_per_class, seed)
    if grey:
        data = to_grey(data)
    if sizes is None:
        writes = [(0, out, data)]
    else:
        pieces = split_parts(data, sizes, seed)
        if part is not None:
            i = part_index(part, len(sizes))
            writes = [(i, out, pieces[i])]
        else:
            writes = [(i, part_path(out, i), p) for i, p in enumerate(pieces)]
    if noise is not None:
        writes = [(i, path, add_uniform_noise(d, noise, seed, stream=i)) for i, path, d in writes]
    return writes
