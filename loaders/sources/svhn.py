"""SVHN cropped digits: `train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat` (MATLAB v5).

`X` is (32, 32, 3, N) uint8 and `y` is (N, 1) with digits 1..10, where 10 stands for 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loaders.sources.base import SourceError, check_labels, sha256_files
from loaders.types import ArrayDataset

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
URLS = {
    split: (f"http://ufldl.stanford.edu/housenumbers/{name}", md5)
    for (split, name), md5 in zip(
        FILES.items(),
        ["e26dedcc434d2e4c54c9b2d4a06d8373", "eb5a983be6a315427106f1b8d1a6d1a1", "a93ce644f1a588dc4d68dda5feec44a7"],
    )
}
CLASS_NAMES = [str(d) for d in range(10)]


def locate(source: Path, split: str) -> Path:
    if split not in FILES:
        raise SourceError(f"svhn: split must be one of {sorted(FILES)}, got {split!r}")
    path = source / FILES[split] if source.is_dir() else source
    if not path.is_file():
        raise SourceError(f"{path}: not found; expected SVHN's {FILES[split]} (format 2, cropped digits)")
    return path


def read_svhn(source: str | Path, split: str = "train") -> ArrayDataset:
    path = locate(Path(source), split)
    try:
        import scipy.io
    except ImportError:
        raise ImportError("reading SVHN .mat files needs scipy: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises ValueError/TypeError/MatReadError on bad files
        raise SourceError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err}); expected {FILES[split]}") from None
    if "X" not in mat or "y" not in mat:
        raise SourceError(f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise SourceError(f"{path}: expected 'X' of shape (32, 32, 3, N), found {x.shape}")
    if x.dtype != np.uint8:
        raise SourceError(f"{path}: expected 'X' of dtype uint8, found {x.dtype}")
    y = y.reshape(-1)
    if len(y) != x.shape[3]:
        raise SourceError(f"{path}: {x.shape[3]} images but {len(y)} labels in 'y'")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise SourceError(f"{path}: labels in 'y' must lie in [1, 10] (10 = digit 0), found [{y.min()}, {y.max()}]")
    labels = check_labels(np.where(y == 10, 0, y).astype(np.int64), 10, str(path))
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # (N, 32, 32, 3)
    return ArrayDataset(images, labels, list(CLASS_NAMES), f"svhn-{split}",
                        {"split": split, "source_sha256": sha256_files([path])})
