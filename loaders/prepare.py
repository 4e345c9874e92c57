"""`prepare` as one function: a split read in its published format (or generated), the derived
sets drawn from it (loaders/sources/derive.py), each written as a .beton with its manifest.
`biamat-engine prepare` and the studies' data steps both call it, so a study's file is the one
the printed `prepare` command writes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from loaders.sources import ChunkedSource
from loaders.types import ArrayDataset

Writer = Callable[[Path, "ArrayDataset | ChunkedSource", str, str, str], dict]
"""(out, dataset, format, split, source) -> the manifest written."""


def write_plain(out: Path, data: ArrayDataset | ChunkedSource, format: str, split: str, source: str) -> dict:
    from loaders.beton import write_beton

    return write_beton(out, data, format=format, split=split, source=source)


def prepare(format: str, source: str | Path | tuple[str | Path, ...], out: str | Path, *, split: str = "train",
            size: int | None = None, seed: int = 0, shapes: dict | None = None, download: bool = False,
            coarse: bool = False, skip_bad: bool = False, workers: int = 1, parts: list[int] | None = None,
            part: str | None = None, uniform_noise: float | None = None, classes: list[int] | None = None,
            n_per_class: int | None = None, grey: bool = False, write: Writer = write_plain,
            on_written: Callable[[Path, dict], None] | None = None) -> list[tuple[Path, dict]]:
    """Every file written, with its manifest: OUT, or its parts (OUT-A.beton, ...; one `part` at
    OUT). `write` writes one file (a progress bar's writer on a terminal); `on_written` hears of
    each as soon as it is there. Options as `biamat-engine prepare` names them."""
    from loaders.sources import read_source  # looked up when called: tests patch it there
    from loaders.sources.derive import derived_sets

    data = read_source(format, source, split, size, download=download, coarse=coarse, skip_bad=skip_bad,
                       workers=workers, seed=seed, shapes=shapes)
    named = source if isinstance(source, (str, Path)) else ",".join(map(str, source))
    written = []
    for _, path, dataset in derived_sets(data, Path(out), parts, part, uniform_noise, seed, classes, n_per_class, grey):
        written.append((path, write(path, dataset, format, split, str(named))))
        if on_written is not None:
            on_written(*written[-1])
    return written
