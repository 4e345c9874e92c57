"""Dataset sources: each reads one dataset in the format its publishers ship.

`SOURCES` maps a format name to its reader; `read_source` is the one entry point `prepare`
uses. Small sets come back as an `ArrayDataset`, big ones (ImageNet, Places365, image folders)
as a `ChunkedSource` that the .beton writer streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loaders.sources.base import ChunkedSource, SourceError
from loaders.sources.idx import FASHION_MNIST_DIR
from loaders.types import ArrayDataset


@dataclass(frozen=True)
class SourceSpec:
    read: Callable[..., ArrayDataset | ChunkedSource]
    """read(source, split, size=..., coarse=..., skip_bad=..., workers=..., seed=..., download=...)"""
    summary: str
    source_help: str
    """What SOURCE is, and where to get it."""
    sizes: tuple[int, ...] = (32,)
    """Allowed --size values; the first is the default."""
    paths: int = 1
    """How many SOURCE paths the format takes (idx: the images file and the labels file)."""
    default_source: str | None = None
    """SOURCE where the command line leaves it out (a system package's folder), if any."""


def _cifar(variant: str):
    def read(source, split, *, coarse=False, download=False, **_):
        from loaders.sources import cifar

        path = Path(source)
        if download:
            from loaders.sources.download import download as fetch

            url, md5 = cifar.URLS[variant]
            path = fetch(url, path / cifar.LAYOUT[variant]["archive"], md5)
        return cifar.read_cifar(path, split, variant=variant, coarse=coarse)

    return read


def _svhn(source, split, *, download=False, **_):
    from loaders.sources import svhn

    if download:
        from loaders.sources.download import download as fetch

        if split not in svhn.URLS:
            raise SourceError(f"svhn: split must be one of {sorted(svhn.URLS)}, got {split!r}")
        url, md5 = svhn.URLS[split]
        fetch(url, Path(source) / svhn.FILES[split], md5)
    return svhn.read_svhn(source, split)


def _imagenet(subset: str | None, fixed_size: int | None = None):
    def read(source, split, *, size=64, seed=0, **_):
        from loaders.sources.imagenet_downsampled import read_imagenet_downsampled

        return read_imagenet_downsampled(source, split, size=fixed_size or size, subset=subset, seed=seed)

    return read


def _places(source, split, *, size=32, skip_bad=False, workers=1, **_):
    from loaders.sources.places365 import read_places365

    return read_places365(source, split, size=size, skip_bad=skip_bad, workers=workers)


def _imagefolder(source, split, *, size=32, skip_bad=False, workers=1, **_):
    from loaders.sources.imagefolder import read_imagefolder

    return read_imagefolder(source, split, size=size, skip_bad=skip_bad, workers=workers)


def _shapes(source, split, *, size=32, seed=0, shapes=None, **_):
    from loaders.sources.shapes import make_shapes

    kind = str(source)
    if kind not in ("primary", "aux"):
        raise SourceError(f"shapes: SOURCE must be 'primary' or 'aux', got {kind!r}")
    if split not in ("train", "test"):
        raise SourceError(f"shapes: split must be 'train' or 'test', got {split!r}")
    return make_shapes(kind, split, size=size, seed=seed, **(shapes or {}))  # its bad options raise SourceError


def _idx(source, split, **_):
    from loaders.sources.idx import read_idx

    images, labels = source
    return read_idx(images, labels)


def _fashion_mnist(source, split, **_):
    from loaders.sources.idx import read_fashion_mnist

    return read_fashion_mnist(source, split)


def _concat(source, split, **_):
    from loaders.sources.concat import read_concat

    return read_concat(source)


_IMAGENET_HELP = "folder with train_data_batch_1..10 / val_data (pickled or .npz) from image-net.org (Downsampled ImageNet)"
SOURCES: dict[str, SourceSpec] = {
    "cifar10": SourceSpec(_cifar("cifar10"), "CIFAR-10 (python version)",
                          "cifar-10-python.tar.gz or its extracted folder; --download fetches it into SOURCE"),
    "cifar100": SourceSpec(_cifar("cifar100"), "CIFAR-100, fine labels (--coarse: 20 superclasses)",
                           "cifar-100-python.tar.gz or its extracted folder; --download fetches it into SOURCE"),
    "svhn": SourceSpec(_svhn, "SVHN cropped digits (train, test, extra)",
                       "folder with train_32x32.mat / test_32x32.mat / extra_32x32.mat, or the .mat file"),
    "imagenet32": SourceSpec(_imagenet(None, 32), "ImageNet 32x32 (1000 classes)", _IMAGENET_HELP, (32,)),
    "imagenet64": SourceSpec(_imagenet(None, 64), "ImageNet 64x64 (1000 classes), streamed", _IMAGENET_HELP, (64,)),
    "imgnet100": SourceSpec(_imagenet("imgnet100"), "100 seeded random ImageNet classes (--seed)", _IMAGENET_HELP, (32, 64)),
    "imgnet900": SourceSpec(_imagenet("imgnet900"), "the other 900 ImageNet classes (--seed)", _IMAGENET_HELP, (32, 64)),
    "places365": SourceSpec(_places, "Places365-Standard small images, resized",
                            "folder of the small-image release (class folders, or file lists + data_256/ val_256/) "
                            "from places2.csail.mit.edu", (32, 64)),
    "imagefolder": SourceSpec(_imagefolder, "any one-folder-per-class image tree, resized",
                              "folder with one sub-folder of JPEG/PNG images per class (or train/ and test/ trees)", (32, 64)),
    # Shapes at any of these sizes: the demo (and `study --scale demo`) draws 16x16, the tests 8x8,
    # the Fashion-MNIST scale its unrelated textures at 28x28.
    "shapes": SourceSpec(_shapes, "built-in synthetic shapes (no download)", "'primary' or 'aux'", (32, 64, 16, 8, 28)),
    "idx": SourceSpec(_idx, "an IDX images/labels pair (MNIST, KMNIST, EMNIST, ...), grey stored as RGB",
                      "the images file and the labels file (raw or .gz), e.g. train-images-idx3-ubyte.gz "
                      "train-labels-idx1-ubyte.gz", (28,), paths=2),
    "fashion-mnist": SourceSpec(_fashion_mnist, "Fashion-MNIST (IDX), grey stored as RGB, 28x28",
                                "folder with the four IDX files under their standard names (raw or .gz); "
                                "default: Debian's dataset-fashion-mnist package folder",
                                (28,), default_source=str(FASHION_MNIST_DIR)),
    "concat": SourceSpec(_concat, "prepared .beton files joined into one set (same classes and size)",
                         "two or more .beton files joined by commas, e.g. data/cifar-A.beton,data/cifar-B.beton"),
}
DOWNLOADABLE = ("cifar10", "cifar100", "svhn")


def read_source(
    format: str, source: str | Path | tuple[str | Path, ...], split: str = "train", size: int | None = None, *,
    download: bool = False, coarse: bool = False, skip_bad: bool = False, workers: int = 1, seed: int = 0,
    shapes: dict | None = None,
) -> ArrayDataset | ChunkedSource:
    """Reads SOURCE in FORMAT; raises SourceError naming the file and what was expected.

    `shapes`: the shapes generator's own knobs (n, difficulty, classes), for that format only.
    `source` is a tuple of paths for the formats that read several files (idx: images, labels)."""
    if format not in SOURCES:
        raise SourceError(f"unknown format {format!r}; expected one of {', '.join(SOURCES)}")
    spec = SOURCES[format]
    given = len(source) if isinstance(source, (tuple, list)) else 1
    if given != spec.paths:
        raise SourceError(f"{format}: SOURCE is {spec.paths} path(s), got {given}: {spec.source_help}")
    size = spec.sizes[0] if size is None else size
    if size not in spec.sizes:
        raise SourceError(f"{format}: --size must be one of {list(spec.sizes)}, got {size}")
    if download and format not in DOWNLOADABLE:
        raise SourceError(f"{format}: --download covers {', '.join(DOWNLOADABLE)} only; get SOURCE by hand: {spec.source_help}")
    if coarse and format != "cifar100":
        raise SourceError("--coarse applies to cifar100 only")
    if shapes and format != "shapes":
        raise SourceError(f"--{' --'.join(shapes)} apply to the shapes format only")
    return spec.read(source, split, size=size, download=download, coarse=coarse,
                     skip_bad=skip_bad, workers=workers, seed=seed, shapes=shapes)


__all__ = ["SOURCES", "SourceSpec", "SourceError", "ChunkedSource", "read_source"]
