"""IDX files (the MNIST family's format: MNIST, Fashion-MNIST, KMNIST, EMNIST), raw or gzipped.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Images are type 0x08
(uint8) with 3 dimensions (N, rows, columns): magic 0x00000803; labels are uint8 with one
dimension (N,): magic 0x00000801. Whether a file is gzipped is read from its first bytes, not
its name.

Grey images are stored as RGB with three equal channels. Every loader backend (the FFCV
pipeline, DALI, the resident kernels) and every model takes (H, W, 3) uint8 pixels, so
replicating at prepare time keeps them all unchanged; the price is 3x the bytes of already
tiny images (Fashion-MNIST's 60000 training images: 141 MB instead of 47 MB). The manifest
says so (`meta.channels_source: 1`, `meta.colour_mode`). Images keep their 28x28 size: the
WideResNet and ResNet pool adaptively and the crop-and-flip augmentation takes any size, so
nothing is padded or resized.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from loaders.sources.base import SourceError, check_labels, sha256_files
from loaders.types import ArrayDataset

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
GZIP_MAGIC = b"\x1f\x8b"

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the four files."""
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

GREY_META = {"channels_source": 1,
             "colour_mode": "grey: the one source channel replicated to R, G and B at prepare time"}


def read_idx_file(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of the IDX file at `path`, whose magic number must be `magic`; a
    SourceError names the file for a wrong magic number, dimension count or length."""
    raw = _read_bytes(path)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    ndim = magic & 0xFF
    if len(raw) < 4:
        raise SourceError(f"{path}: {len(raw)} bytes, too short for an IDX file; expected IDX {kind}")
    found = int.from_bytes(raw[:4], "big")
    if found >> 8 != magic >> 8:
        raise SourceError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} for IDX {kind} "
                          f"(uint8, {ndim}-D); is this the right file?")
    if found != magic:
        raise SourceError(f"{path}: {found & 0xFF} dimensions, expected {ndim} for IDX {kind} "
                          f"(magic 0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SourceError(f"{path}: truncated: {len(raw)} bytes end inside the {header}-byte IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes"
        raise SourceError(f"{path}: {what}: {len(raw)} bytes, the header's shape {shape} needs {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    with open(path, "rb") as fp:
        gzipped = fp.read(2) == GZIP_MAGIC
    if not gzipped:
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fp:
            return fp.read()
    except (EOFError, OSError, zlib.error) as err:
        raise SourceError(f"{path}: truncated or corrupt gzip file ({err}); download it again") from None


def read_idx(images: str | Path, labels: str | Path, class_names: list[str] | None = None,
             name: str | None = None) -> ArrayDataset:
    """The image/label IDX pair as an ArrayDataset of (N, H, W, 3) grey-as-RGB images.

    Without `class_names` the classes are "0", "1", ... up to the largest label."""
    images, labels = Path(images), Path(labels)
    pixels = read_idx_file(images, IMAGES_MAGIC)  # (N, H, W)
    targets = read_idx_file(labels, LABELS_MAGIC)  # (N,)
    if len(pixels) != len(targets):
        raise SourceError(f"{images}: {len(pixels)} images but {labels} holds {len(targets)} labels; "
                          "pass the labels file of the same split")
    if pixels.shape[1] != pixels.shape[2]:
        raise SourceError(f"{images}: images of {pixels.shape[1]}x{pixels.shape[2]}; expected square images")
    if len(pixels) == 0:
        raise SourceError(f"{images}: holds no images")
    if class_names is None:
        class_names = [str(c) for c in range(int(targets.max()) + 1)]
    targets = check_labels(targets, len(class_names), str(labels))
    rgb = np.repeat(pixels[..., None], 3, axis=-1)  # (N, H, W, 3)
    meta = {**GREY_META, "source_sha256": sha256_files([images, labels]),
            "idx_files": {"images": str(images), "labels": str(labels)}}
    return ArrayDataset(rgb, targets, list(class_names), name or _stem(images), meta)


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz")


def fashion_mnist_files(folder: str | Path, split: str) -> tuple[Path, Path]:
    """The images and labels files of `split` in `folder`, by their standard names, raw or .gz."""
    if split not in FASHION_MNIST_FILES:
        raise SourceError(f"fashion-mnist: split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        hint = (" (install it with `apt-get install dataset-fashion-mnist`)" if folder == FASHION_MNIST_DIR
                else "")
        raise SourceError(f"{folder}: no such folder{hint}; expected the four Fashion-MNIST IDX files there")
    found = []
    for stem in FASHION_MNIST_FILES[split]:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SourceError(f"{folder}: neither {stem} nor {stem}.gz is there; expected the {split} split's "
                              "IDX files under their standard names")
        found.append(path)
    return found[0], found[1]


def read_fashion_mnist(folder: str | Path, split: str) -> ArrayDataset:
    images, labels = fashion_mnist_files(folder, split)
    return read_idx(images, labels, FASHION_MNIST_CLASSES, name="fashion-mnist")
