"""CIFAR-10 and CIFAR-100, python version: the `.tar.gz` as published or its extracted folder.

CIFAR-10: `cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`.
CIFAR-100: `cifar-100-python/{train, test, meta}` with fine (100) and coarse (20) labels.
Each batch is a pickled dict (byte-string keys, written by Python 2): `data` is (N, 3072)
uint8 with the red, green and blue planes of a 32x32 image in a row.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from loaders.sources.base import SourceError, check_labels, planar_rows_to_hwc, sha256_files
from loaders.sources.safe_pickle import safe_loads
from loaders.types import ArrayDataset

LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
}
URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        obj = safe_loads(blob, where, encoding="bytes")
    except SourceError:
        raise
    except Exception as err:  # truncated files raise EOFError, UnpicklingError, ValueError, ...
        raise SourceError(f"{where}: truncated or not a pickled CIFAR batch ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _Files:
    """Reads member files by name from the archive or the extracted folder."""

    def __init__(self, source: Path, variant: str) -> None:
        layout = LAYOUT[variant]
        self.source, self.variant = source, variant
        self.tar: tarfile.TarFile | None = None
        if source.is_file():
            try:
                self.tar = tarfile.open(source, "r:*")
                members = [m for m in self.tar.getmembers() if m.isfile()]
            except (tarfile.TarError, EOFError, OSError) as err:
                raise SourceError(
                    f"{source}: not a readable tar archive ({err}); expected {layout['archive']}, "
                    f"the CIFAR python version"
                ) from None
            # Members are found by file name: one named ../data_batch_1 (or /abs/...) would stand in
            # for the real batch. Refused, as the Places365 reader refuses such list entries.
            escaping = [m.name for m in members if Path(m.name).is_absolute() or ".." in Path(m.name).parts]
            if escaping:
                raise SourceError(f"{source}: archive member {escaping[0]!r} points outside the archive's folder; "
                                  f"not an archive as published: download {layout['archive']} again")
            self.members = {Path(m.name).name: m for m in members}
        else:
            folder = source / layout["folder"] if (source / layout["folder"]).is_dir() else source
            if not folder.is_dir():
                raise SourceError(f"{source}: no such file or folder; expected {layout['archive']} or its extracted folder")
            self.folder = folder
            self.members = {p.name: p for p in folder.iterdir() if p.is_file()}
        expected = layout["train"] + layout["test"] + [layout["meta"]]
        missing = [name for name in expected if name not in self.members]
        if missing:
            raise SourceError(
                f"{source}: wrong archive or folder for {variant}: missing {', '.join(missing)}; expected "
                f"{layout['archive']} (python version) containing {layout['folder']}/{{{', '.join(expected)}}}"
            )

    def where(self, name: str) -> str:
        return f"{self.source}:{name}" if self.tar else str(self.folder / name)

    def load(self, name: str) -> dict:
        if self.tar is not None:
            try:
                blob = self.tar.extractfile(self.members[name]).read()
            except (tarfile.TarError, EOFError, OSError, ValueError) as err:
                raise SourceError(f"{self.where(name)}: truncated archive member ({err})") from None
        else:
            blob = self.members[name].read_bytes()
        return _unpickle(blob, self.where(name))

    def checksum(self, names: list[str]) -> str:
        paths = [self.source] if self.tar else [self.members[n] for n in names]
        return sha256_files(paths)


def read_cifar(source: str | Path, split: str = "train", *, variant: str = "cifar10", coarse: bool = False) -> ArrayDataset:
    """One CIFAR split; CIFAR-100 gives fine labels unless `coarse`."""
    if variant not in LAYOUT:
        raise ValueError(f"unknown CIFAR variant {variant!r}; expected one of {sorted(LAYOUT)}")
    if split not in ("train", "test"):
        raise SourceError(f"{variant}: split must be 'train' or 'test', got {split!r}")
    if coarse and variant != "cifar100":
        raise SourceError("--coarse applies to cifar100 only")
    layout = LAYOUT[variant]
    files = _Files(Path(source), variant)
    meta = files.load(layout["meta"])
    names_key = "label_names" if variant == "cifar10" else ("coarse_label_names" if coarse else "fine_label_names")
    labels_key = "labels" if variant == "cifar10" else ("coarse_labels" if coarse else "fine_labels")
    expected_classes = {"cifar10": 10, "cifar100": 20 if coarse else 100}[variant]
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if len(class_names) != expected_classes:
        raise SourceError(
            f"{files.where(layout['meta'])}: expected {expected_classes} names under '{names_key}', found {len(class_names)}"
        )
    images, labels = [], []
    for name in layout[split]:
        batch = files.load(name)
        where = files.where(name)
        if "data" not in batch or labels_key not in batch:
            raise SourceError(f"{where}: expected keys 'data' and '{labels_key}', found {sorted(batch)}")
        x = planar_rows_to_hwc(batch["data"], 32, where)
        y = check_labels(np.asarray(batch[labels_key]), expected_classes, where)
        if len(y) != len(x):
            raise SourceError(f"{where}: {len(x)} images but {len(y)} labels")
        images.append(x)
        labels.append(y)
    return ArrayDataset(
        np.concatenate(images), np.concatenate(labels), class_names,
        f"{variant}{'-coarse' if coarse else ''}-{split}",
        {"split": split, "source_sha256": files.checksum(layout[split] + [layout["meta"]])},
    )
