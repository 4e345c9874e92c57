"""FFCV .beton files, written and read with numpy alone, plus their JSON manifest.

The layout is FFCV 1.0.2's file format (version 2), so `ffcv.loader.Loader` reads what we
write, but neither `prepare` nor the resident backend needs ffcv installed:

    header | 2 field descriptors | per-sample metadata | zero pad to a page | data pages | alloc table

Two fields: `image` (RGBImageField, raw mode: H*W*3 uint8 pixels) and `label` (IntField, int64
stored inline in the metadata). Every image of a dataset has the same size, so images pack
into pages at fixed offsets and no image straddles a page, which FFCV's page-wise caches need.

Writing is streaming (one chunk in memory at a time) and atomic: everything goes to temporary
files in the destination folder that are `os.replace`d at the end, so an error or Ctrl-C never
leaves a half-written .beton or manifest behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from loaders.sources.base import ChunkedSource, SourceError, iter_chunks
from loaders.images import ChannelStats
from loaders.json_values import finite_number, whole_number
from loaders.processes import pid_alive
from loaders.types import CHANNEL_STATS_KEYS, ArrayDataset, DatasetInfo

log = logging.getLogger(__name__)

FFCV_FILE_VERSION = 2
MANIFEST_VERSION = 1
PAGE_SIZE = 1 << 23  # FFCV's default (4 x 2 MiB huge pages)

# The dtypes below mirror ffcv/types.py and ffcv/fields/{rgb_image,basics}.py; a test checks
# them against ffcv's own when it is installed.
HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
     ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
SAMPLE_META = np.dtype([("image", IMAGE_META), ("label", "<i8")], align=True)
ALLOC_ENTRY = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
TYPE_INT, TYPE_RGB = 1, 2  # ffcv.types.TYPE_ID_HANDLER
RAW_MODE = 1  # ffcv.fields.rgb_image.IMAGE_MODES["raw"]
FIELDS = (("image", TYPE_RGB), ("label", TYPE_INT))


def manifest_path(beton: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(beton)}.json")


def _align(offset: int, page: int) -> int:
    return -(-offset // page) * page


def _field_descriptors() -> np.ndarray:
    desc = np.zeros(len(FIELDS), dtype=FIELD_DESC)
    for i, (name, type_id) in enumerate(FIELDS):
        desc[i]["type_id"] = type_id
        encoded = np.frombuffer(name.encode("ascii"), dtype="<u1")
        desc[i]["name"][: len(encoded)] = encoded
    return desc


class _PagePacker:
    """Appends fixed-size images to a file, page by page, remembering nothing but counts."""

    def __init__(self, fp, image_bytes: int, page_size: int) -> None:
        if image_bytes > page_size:
            raise ValueError(f"an image of {image_bytes} bytes does not fit a {page_size}-byte page")
        self.fp, self.image_bytes, self.page_size = fp, image_bytes, page_size
        self.per_page = page_size // image_bytes
        self.count = 0

    def add(self, flat: np.ndarray) -> None:
        """flat: (n, image_bytes) uint8, written after the images already there."""
        pad = self.page_size - self.per_page * self.image_bytes
        start = 0
        while start < len(flat):
            room = self.per_page - self.count % self.per_page
            part = flat[start : start + room]
            self.fp.write(part.tobytes())
            self.count += len(part)
            start += len(part)
            if self.count % self.per_page == 0 and pad:
                self.fp.write(bytes(pad))

    def finish(self) -> None:
        """Zero-fills the last page: FFCV's page caches read whole pages."""
        used = self.count % self.per_page
        if used:
            self.fp.write(bytes(self.page_size - used * self.image_bytes))

    def pointers(self, data_start: int) -> np.ndarray:
        i = np.arange(self.count, dtype=np.uint64)
        page, slot = i // self.per_page, i % self.per_page
        return np.uint64(data_start) + page * np.uint64(self.page_size) + slot * np.uint64(self.image_bytes)


def _remove_stale_temporaries(path: Path) -> None:
    """Deletes the temporaries an earlier, killed write of `path` left behind (up to a whole
    .beton each); a live writer's, named by its pid, stay."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        pid = leftover.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        leftover.unlink(missing_ok=True)


def write_beton(
    path: str | os.PathLike,
    data: ArrayDataset | ChunkedSource,
    *,
    format: str = "arrays",
    split: str = "train",
    source: str | None = None,
    progress: Callable[[int], None] | None = None,
    page_size: int = PAGE_SIZE,
) -> dict:
    """Writes `path` (.beton) and `path.json` (the manifest) atomically; returns the manifest.

    `progress(n)` is called with the number of samples written after each chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = data.image_size if isinstance(data, ChunkedSource) else data.images.shape[1]
    class_names = list(data.class_names)
    image_bytes = size * size * 3
    header_bytes = HEADER.itemsize + len(FIELDS) * FIELD_DESC.itemsize
    known = data.count if isinstance(data, ChunkedSource) else len(data)

    _remove_stale_temporaries(path)
    # The writer's pid in the name tells a later run which temporaries are orphans (SIGKILL).
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the published file private
    spool: Path | None = None
    tmp_manifest = tmp.with_suffix(".json.tmp")
    try:
        with os.fdopen(fd, "w+b") as out:
            if known is not None:
                # The count is known, so the data region's offset is too: pack straight into place.
                data_start = _align(header_bytes + known * SAMPLE_META.itemsize, page_size)
                out.seek(data_start)
                data_fp = out
            else:
                # Unknown count (pickled ImageNet batches): spool the pages, place them at the end.
                spool = tmp.with_suffix(".pages.tmp")
                data_fp = open(spool, "w+b")
            try:
                packer = _PagePacker(data_fp, image_bytes, page_size)
                labels, digest, stats = _write_chunks(data, packer, size, class_names, progress)
                packer.finish()
                n = packer.count
                if known is not None and n != known:
                    raise SourceError(f"{data.name}: the source announced {known} samples but yielded {n}")
                if known is None:
                    data_start = _align(header_bytes + n * SAMPLE_META.itemsize, page_size)
                    out.seek(data_start)
                    data_fp.seek(0)
                    shutil.copyfileobj(data_fp, out, 1 << 24)
            finally:
                if data_fp is not out:
                    data_fp.close()
            _write_index(out, n, labels, packer.pointers(data_start), size, page_size)
            out.flush()
            os.fsync(out.fileno())

        manifest = _manifest(data, format, split, source, class_names, labels, size, digest, stats)
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        _publish([(tmp, path), (tmp_manifest, manifest_path(path))])
        return manifest
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        # A write that fails mid-file (a full disk) names no file: name the one being written.
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        for leftover in (tmp, tmp_manifest, spool):
            if leftover is not None and leftover.exists():
                leftover.unlink()


def _write_chunks(data, packer: _PagePacker, size: int, class_names: list[str], progress):
    digest = hashlib.sha256()
    stats = ChannelStats()
    labels: list[np.ndarray] = []
    for chunk in iter_chunks(data):
        if chunk.images.shape[1:] != (size, size, 3):
            raise SourceError(
                f"{chunk.name}: every image must be {size}x{size}x3, found a chunk of {chunk.images.shape[1:]}"
            )
        if list(chunk.class_names) != class_names:
            raise SourceError(f"{chunk.name}: a chunk came with a different class list than the dataset's")
        flat = np.ascontiguousarray(chunk.images).reshape(len(chunk), -1)
        packer.add(flat)
        digest.update(flat.tobytes())
        digest.update(chunk.labels.astype("<i8").tobytes())
        stats.add(chunk.images)
        labels.append(chunk.labels)
        if progress is not None:
            progress(len(chunk))
    labels_all = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(labels_all) == 0:
        raise SourceError(f"{data.name}: the source holds no images; nothing to write")
    return labels_all, digest.hexdigest(), stats.mean_std()


def _write_index(out, n: int, labels: np.ndarray, pointers: np.ndarray, size: int, page_size: int) -> None:
    header = np.zeros(1, dtype=HEADER)
    out.seek(0, os.SEEK_END)
    alloc_ptr = out.tell()
    header[0] = (FFCV_FILE_VERSION, len(FIELDS), page_size, n, alloc_ptr)
    meta = np.zeros(n, dtype=SAMPLE_META)
    meta["image"]["mode"] = RAW_MODE
    meta["image"]["width"] = size
    meta["image"]["height"] = size
    meta["image"]["data_ptr"] = pointers
    meta["label"] = labels
    alloc = np.zeros(n, dtype=ALLOC_ENTRY)
    alloc["sample_id"] = np.arange(n, dtype=np.uint64)
    alloc["ptr"] = pointers
    alloc["size"] = size * size * 3
    out.write(alloc.tobytes())
    out.seek(0)
    out.write(header.tobytes())
    out.write(_field_descriptors().tobytes())
    out.write(meta.tobytes())


def _manifest(data, format, split, source, class_names, labels, size, digest, stats) -> dict:
    meta = {k: v for k, v in data.meta.items() if k not in CHANNEL_STATS_KEYS}  # recomputed: `stats`
    counts = np.bincount(labels, minlength=len(class_names))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "ffcv_file_version": FFCV_FILE_VERSION,
        "name": data.name,
        "format": format,
        "split": split,
        "source": source,
        "source_sha256": meta.pop("source_sha256", None),
        "content_sha256": digest,
        "count": int(len(labels)),
        "image_size": int(size),
        "num_classes": len(class_names),
        "class_names": class_names,
        "class_counts": [int(c) for c in counts],
        # Per-channel mean and std of every pixel in [0, 1] units: what a model trained on this
        # split normalises with.
        "channel_mean": stats[0],
        "channel_std": stats[1],
        "fields": {"image": f"RGBImageField raw {size}x{size}x3 uint8", "label": "IntField int64"},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "related" in meta:
        manifest["related"] = [bool(r) for r in meta.pop("related")]
    manifest["meta"] = _jsonable(meta)
    return manifest


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _publish(moves: list[tuple[Path, Path]]) -> None:
    """Renames the finished files into place with Ctrl-C held back, so the .beton and its
    manifest appear together (a signal mask only applies on the main thread)."""
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for src, dst in moves:
            os.replace(src, dst)
    finally:
        if on_main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a .beton (pass the .beton or the .json path)."""
    path = Path(path)
    mpath = path if path.suffix == ".json" else manifest_path(path)
    if not mpath.exists():
        raise FileNotFoundError(
            f"{mpath}: manifest not found; .beton files are written with their manifest by "
            f"`biamat-engine prepare FORMAT SOURCE {path.with_suffix('.beton').name}`"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # the latter: a binary file
        raise SourceError(f"{mpath}: the manifest is not valid JSON ({err}); prepare the dataset again") from None
    if not isinstance(manifest, dict):
        raise SourceError(f"{mpath}: the manifest is not a JSON object; prepare the dataset again")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise SourceError(
            f"{mpath}: manifest version {manifest.get('manifest_version')}, this engine reads "
            f"{MANIFEST_VERSION}; prepare the dataset again"
        )
    _check_manifest(manifest, mpath)
    return manifest


def _check_manifest(manifest: dict, mpath: Path) -> None:
    """A SourceError naming `mpath` and the key unless the fields the loaders read have their types."""
    def bad(key: str, expected: str) -> SourceError:
        found = repr(manifest[key])[:40] if key in manifest else "missing"
        return SourceError(f"{mpath}: manifest key {key!r} is {found}, expected {expected}; "
                           "the manifest was edited or damaged: prepare the dataset again")

    count = manifest.get("count")
    if not whole_number(count) or count < 0:
        raise bad("count", "the number of samples")
    names = manifest.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of class names")
    for key in CHANNEL_STATS_KEYS:
        values = manifest.get(key, [0.5] * 3)
        if (not isinstance(values, list) or len(values) != 3
                or not all(finite_number(v) for v in values)
                or (key == "channel_std" and min(values) < 0)):
            raise bad(key, "3 finite numbers, one per RGB channel" + (", none negative" if key == "channel_std" else ""))


class BetonIndex:
    """The header, fields and per-sample metadata of a .beton, checked against what we write."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such .beton file")
        file_size = self.path.stat().st_size
        header_bytes = HEADER.itemsize + len(FIELDS) * FIELD_DESC.itemsize
        if file_size < header_bytes:
            raise SourceError(f"{self.path}: {file_size} bytes is too short for a .beton file")
        with self.path.open("rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":  # numpy's .npz is a zip archive; its "version" would read as 19280
            raise SourceError(f"{self.path}: a zip archive (an .npz?), not a .beton written by `biamat-engine prepare`; "
                              "name an .npz file *.npz, or prepare a .beton from it")
        header = np.fromfile(self.path, dtype=HEADER, count=1)[0]
        if header["version"] != FFCV_FILE_VERSION:
            raise SourceError(f"{self.path}: FFCV file version {header['version']}, expected {FFCV_FILE_VERSION}")
        desc = np.fromfile(self.path, dtype=FIELD_DESC, count=header["num_fields"], offset=HEADER.itemsize)
        names = [bytes(d["name"]).split(b"\0")[0].decode("ascii") for d in desc]
        types = [int(d["type_id"]) for d in desc]
        if list(zip(names, types)) != list(FIELDS):
            raise SourceError(
                f"{self.path}: fields {list(zip(names, types))}, expected {list(FIELDS)} "
                f"(image RGBImageField, label IntField) as written by `biamat-engine prepare` or by FFCV's "
                f"DatasetWriter with fields {{'image': RGBImageField(), 'label': IntField()}}"
            )
        self.num_samples = int(header["num_samples"])
        self.page_size = int(header["page_size"])
        # Checked before anything is read by them: a damaged header asks for 2^64 records.
        if self.page_size <= 0:
            raise SourceError(f"{self.path}: page size {self.page_size} in its header; the file is damaged: prepare it again")
        data_start = header_bytes + self.num_samples * SAMPLE_META.itemsize
        if data_start > file_size:
            raise SourceError(f"{self.path}: its header claims {self.num_samples:,} samples, more than its {file_size:,} "
                              "bytes can hold: truncated or damaged; prepare it again")
        self.metadata = np.fromfile(self.path, dtype=SAMPLE_META, count=self.num_samples, offset=header_bytes)
        if len(self.metadata) != self.num_samples:
            raise SourceError(f"{self.path}: truncated: {len(self.metadata)} of {self.num_samples} metadata records")
        image = self.metadata["image"]
        if self.num_samples and (image["mode"] != RAW_MODE).any():
            raise SourceError(f"{self.path}: JPEG-compressed images are not supported; write raw RGB with `prepare`")
        sizes = set(zip(image["height"].tolist(), image["width"].tolist()))
        if len(sizes) > 1 or any(h != w for h, w in sizes):
            raise SourceError(f"{self.path}: images must share one square size, found {sorted(sizes)[:4]}")
        self.image_size = int(image["height"][0]) if self.num_samples else 0
        if self.num_samples and self.image_size == 0:
            raise SourceError(f"{self.path}: its images are 0x0 pixels; the file is damaged: prepare it again")
        start = image["data_ptr"].astype(np.uint64)
        end = start + np.uint64(3 * self.image_size**2)
        if self.num_samples and (start.min() < data_start or (end < start).any()):
            raise SourceError(f"{self.path}: an image's data pointer points into the header (before byte "
                              f"{data_start:,}): the file is damaged: prepare it again")
        if self.num_samples and end.max() > file_size:
            raise SourceError(f"{self.path}: truncated: image data runs past the end of the file")


def _open(path: str | os.PathLike) -> tuple[BetonIndex, dict]:
    """The index and the manifest of a .beton, checked to describe the same samples."""
    index = BetonIndex(path)
    manifest = _manifest_of(index)
    if manifest["count"] != index.num_samples:
        raise SourceError(f"{path}: manifest says {manifest['count']} samples, the file holds "
                          f"{index.num_samples}; prepare it again")
    return index, manifest


def read_beton(path: str | os.PathLike) -> ArrayDataset:
    """Decodes a whole .beton into host memory; class names come from its manifest."""
    index, manifest = _open(path)
    raw = np.memmap(index.path, dtype=np.uint8, mode="r")
    images = _gather(raw, index.metadata["image"]["data_ptr"].astype(np.int64), index.image_size)
    del raw
    labels = index.metadata["label"].astype(np.int64)
    info = beton_info(index, manifest)
    return ArrayDataset(images, labels, list(info.class_names), info.name, info.meta)


def iter_beton(path: str | os.PathLike, rows: int = 4096, index: np.ndarray | None = None) -> Iterator[ArrayDataset]:
    """The samples of a .beton (or only those at the sorted positions `index`), in order, as
    ArrayDatasets of at most `rows` samples: one chunk in host memory at a time, for files too
    big to decode whole (ImageNet64). Each chunk has the file's classes, name and meta, without
    the whole file's channel statistics."""
    beton, manifest = _open(path)
    info = beton_info(beton, manifest)
    meta = {k: v for k, v in info.meta.items() if k not in CHANNEL_STATS_KEYS}
    positions = np.arange(beton.num_samples) if index is None else np.asarray(index, dtype=np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= beton.num_samples):
        raise IndexError(f"{path}: sample positions must lie in [0, {beton.num_samples}), "
                         f"found [{positions.min()}, {positions.max()}]")
    raw = np.memmap(beton.path, dtype=np.uint8, mode="r")
    pointers = beton.metadata["image"]["data_ptr"].astype(np.int64)
    labels = beton.metadata["label"].astype(np.int64)
    for start in range(0, len(positions), rows):
        part = positions[start:start + rows]
        yield ArrayDataset(_gather(raw, pointers[part], beton.image_size), labels[part],
                           list(info.class_names), info.name, dict(meta))


def _gather(raw: np.ndarray, pointers: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: the images at byte offsets `pointers` (n,) of the mapped file."""
    n, nbytes = len(pointers), 3 * size * size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    if n == 0:
        return images
    flat = images.reshape(n, -1)
    # Consecutive samples usually sit back to back within a page: copy runs, not single images.
    breaks = np.flatnonzero(np.diff(pointers) != nbytes) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, n]):
        begin = pointers[start]
        flat[start:stop] = raw[begin : begin + (stop - start) * nbytes].reshape(stop - start, nbytes)
    return images


_UNNAMED_WARNED: set[Path] = set()


def _manifest_of(index: BetonIndex) -> dict:
    """The manifest beside the .beton; for a file without one (written by FFCV's own
    `DatasetWriter`), what the file itself says: its count and image size, and as many classes
    as its label range 0..max, named by their numbers since their real names are unknown."""
    if manifest_path(index.path).exists():
        return read_manifest(index.path)
    labels = index.metadata["label"]
    if index.num_samples == 0:
        raise SourceError(f"{index.path}: holds no samples (and has no manifest beside it)")
    if labels.min() < 0:
        raise SourceError(f"{index.path}: labels must be class ids from 0, found {labels.min()}; "
                          "write the file with labels 0..K-1 or prepare it with `biamat-engine prepare`")
    num_classes = int(labels.max()) + 1
    if index.path not in _UNNAMED_WARNED:  # once per file, not once per stream over it
        _UNNAMED_WARNED.add(index.path)
        log.warning("%s: no manifest beside it (%s); %d images %dx%d, %d classes from its labels 0..%d; "
                    "class names unknown, called by their numbers", index.path, manifest_path(index.path).name,
                    index.num_samples, index.image_size, index.image_size, num_classes, num_classes - 1)
    return {
        "manifest_version": MANIFEST_VERSION, "name": index.path.stem, "format": "ffcv", "split": None,
        "count": index.num_samples, "image_size": index.image_size, "num_classes": num_classes,
        "class_names": [str(c) for c in range(num_classes)],
        "meta": {"class_names_known": False,
                 "manifest": "none beside the file; count, size and classes read from the .beton itself"},
    }


def beton_info(index: BetonIndex, manifest: dict | None = None) -> DatasetInfo:
    """The name, classes, image size and meta of the .beton behind `index`, from its manifest
    (read here unless given): what a stream over the file reports as `info`, whichever backend
    reads it, and what `read_beton` names its in-memory copy with."""
    manifest = _manifest_of(index) if manifest is None else manifest
    meta = dict(manifest.get("meta", {}))
    meta.update(format=manifest.get("format"), split=manifest.get("split"), beton=str(index.path))
    if "related" in manifest:
        meta["related"] = list(manifest["related"])
    for key in CHANNEL_STATS_KEYS:  # absent from manifests written before they were recorded
        if key in manifest:
            meta[key] = list(manifest[key])
    return DatasetInfo(manifest.get("name", index.path.stem), tuple(manifest["class_names"]), index.image_size, meta)
