"""The .beton files the paper-scale presets read, and the `biamat-engine prepare` command that
writes each one (format, split and size as cli/prepare_cmd.py and loaders/sources name them).

SOURCE folders are written as RAW/...: the dataset as its publishers ship it (CIFAR and SVHN
can be fetched with --download; ImageNet and Places365 come from their sites, see
`biamat-engine prepare --help`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PaperFile:
    args: tuple[str, ...]
    """`prepare` arguments before and after OUT: (FORMAT, SOURCE) then options."""
    options: tuple[str, ...]
    images: int
    """Images in the split as published (for the plan's estimate when the file is not there yet)."""


# ImageNet's 1,281,167 training images: ImgNet100 holds about a tenth of them (the classes are a
# seeded draw of 100 of the 1000, each with 732-1300 images), ImgNet900 the rest.
PAPER_FILES: dict[str, PaperFile] = {
    "cifar10-train.beton": PaperFile(("cifar10", "RAW/cifar10"), ("--download",), 50_000),
    "cifar10-test.beton": PaperFile(("cifar10", "RAW/cifar10"), ("--split", "test", "--download"), 10_000),
    "cifar100-train.beton": PaperFile(("cifar100", "RAW/cifar100"), ("--download",), 50_000),
    "cifar100-test.beton": PaperFile(("cifar100", "RAW/cifar100"), ("--split", "test", "--download"), 10_000),
    "svhn-train.beton": PaperFile(("svhn", "RAW/svhn"), ("--download",), 73_257),
    "imagenet32-train.beton": PaperFile(("imagenet32", "RAW/Imagenet32_train"), (), 1_281_167),
    "places365-32-train.beton": PaperFile(("places365", "RAW/places365_standard"),
                                          ("--size", "32", "--workers", "8"), 1_803_460),
    "places365-64-train.beton": PaperFile(("places365", "RAW/places365_standard"),
                                          ("--size", "64", "--workers", "8"), 1_803_460),
    "imgnet100-train.beton": PaperFile(("imgnet100", "RAW/Imagenet64_train"), ("--size", "64", "--seed", "0"),
                                       128_000),
    "imgnet100-test.beton": PaperFile(("imgnet100", "RAW/Imagenet64_val"),
                                      ("--split", "test", "--size", "64", "--seed", "0"), 5_000),
    "imgnet900-train.beton": PaperFile(("imgnet900", "RAW/Imagenet64_train"), ("--size", "64", "--seed", "0"),
                                       1_153_000),
}


def prepare_command(path: str | Path) -> str:
    """The shell command that writes `path`, or a pointer to `prepare --help` for a file this
    table does not know."""
    recipe = PAPER_FILES.get(Path(path).name)
    if recipe is None:
        return f"(no recipe for {Path(path).name}: see `biamat-engine prepare --help`)"
    return shlex.join(["biamat-engine", "prepare", *recipe.args, str(path), *recipe.options])


def published_images(path: str | Path) -> int | None:
    recipe = PAPER_FILES.get(Path(path).name)
    return recipe.images if recipe else None
