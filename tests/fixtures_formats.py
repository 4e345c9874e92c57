"""Tiny datasets written in each publisher's own format, with the arrays they should decode to."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def hwc_to_planar_rows(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) -> (N, 3*H*W) with the R, G, B planes in a row, as CIFAR/ImageNet ship them."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: Path, per_batch: int = 6, archive: bool = True) -> tuple[Path, dict]:
    """cifar-10-batches-py with 5 train batches + test; returns the path and expected arrays."""
    rng = _rng(10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"data": hwc_to_planar_rows(images), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(images)
        expected[split][1].append(np.array(labels))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    arrays = {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in expected.items()}
    if not archive:
        return folder, arrays
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path, arrays


def write_cifar100(root: Path, n: int = 12) -> tuple[Path, dict]:
    rng = _rng(100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    expected = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        batch = {b"data": hwc_to_planar_rows(images), b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        expected[split] = (images, fine, coarse)
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, expected


def write_svhn(root: Path, split: str = "train", n: int = 9) -> tuple[Path, tuple[np.ndarray, np.ndarray]]:
    import scipy.io

    rng = _rng(7)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    digits = np.arange(n) % 10  # covers 0, stored as 10
    y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
    path = root / f"{split}_32x32.mat"
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})
    return path, (images, digits)


def write_imagenet(root: Path, size: int = 32, batches: int = 2, n: int = 40, npz: bool = False):
    """train_data_batch_1..B + val_data with 1-based labels over all 1000 classes."""
    rng = _rng(size)
    root.mkdir(parents=True, exist_ok=True)
    expected = {"train": ([], []), "test": ([], [])}
    names = [f"train_data_batch_{i}" for i in range(1, batches + 1)] + ["val_data"]
    for name in names:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        rows = hwc_to_planar_rows(images)
        if npz:
            np.savez(root / f"{name}.npz", data=rows, labels=labels)
        else:
            (root / name).write_bytes(pickle.dumps({"data": rows, "labels": labels.tolist(), "mean": rows.mean(0)}))
        split = "test" if name == "val_data" else "train"
        expected[split][0].append(images)
        expected[split][1].append(labels)
    return root, {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in expected.items()}


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 4, size: int = 32) -> dict:
    """PNG files (lossless) of exactly `size`, so decoding is byte-exact; returns path -> (image, label)."""
    rng = _rng(3)
    files = {}
    for label in range(classes):
        for i in range(per_class):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            path = root / f"class_{label}" / f"{i:03d}.png"
            write_png(path, image)
            files[path] = (image, label)
    return files


def write_places365_lists(root: Path, n: int = 6, size: int = 32) -> tuple[Path, np.ndarray, np.ndarray]:
    """The file-list layout: categories_places365.txt, places365_val.txt over val_256/."""
    rng = _rng(365)
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories_places365.txt").write_text("".join(f"/a/cls{i:03d} {i}\n" for i in range(365)))
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 365, n)
    lines = []
    for i in range(n):
        name = f"Places365_val_{i + 1:08d}.png"
        write_png(root / "val_256" / name, images[i])
        lines.append(f"{name} {labels[i]}\n")
    (root / "places365_val.txt").write_text("".join(lines))
    return root, images, labels


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    blob = src.read_bytes()
    dst.write_bytes(blob[: int(len(blob) * keep)])
    return dst


def tar_bytes(members: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array as an IDX file: magic 0x0000 08 NDIM, big-endian uint32 dimensions, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(root: Path, prefix: str = "train", n: int = 30, size: int = 28, classes: int = 10,
              gz: bool = False) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """An MNIST-style images/labels pair under the standard names (`train-images-idx3-ubyte`,
    `t10k-...`), gzipped or raw; returns both paths and the (N, H, W) images and (N,) labels.
    Every class appears (labels cycle), so the class count is `classes`."""
    import gzip

    rng = _rng(803 + n)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.uint8)
    rng.shuffle(labels)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        blob = idx_bytes(array)
        path = root / (f"{stem}.gz" if gz else stem)
        path.write_bytes(gzip.compress(blob) if gz else blob)
        paths.append(path)
    return paths[0], paths[1], images, labels
