"""Resolving dataset specs to arrays, and datasets to streams through a named backend.

A dataset spec is one of:

- `shapes:primary` or `shapes:aux`, optionally with generator options after a `?`, joined
  by `&`: `shapes:aux?n=2000&size=32&seed=3&difficulty=2&classes=16&groups=related` (options:
  n, size, seed, difficulty, classes, all integers, and groups, a word; see
  `loaders.sources.shapes.make_shapes`);
- a path to a `.beton` file written by `biamat-engine prepare`;
- a path to a `.npz` file with arrays `images` (N, H, W, 3) uint8 and `labels` (N,) int, and
  optionally `class_names` (otherwise the classes are named "0", "1", ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kernels.errors import InputError
from loaders.options import LoaderOptions
from loaders.stream import ImageStream
from loaders.types import ArrayDataset

BACKENDS = ("resident", "ffcv", "dali")
SPEC_FORMS = ("shapes:primary", "shapes:aux", "shapes:KIND?n=N&size=S&seed=K",
              "PATH.beton", "PATH.npz")
_SHAPES_OPTIONS = ("n", "size", "seed", "difficulty", "classes", "groups")
_SHAPES_WORDS = ("groups",)  # the options that are words, not integers


def open_dataset(spec: str, split: str) -> ArrayDataset:
    """The `split` ("train" or "test") of the dataset `spec` names, decoded into host memory,
    its per-channel pixel statistics in `meta` (from the manifest of a .beton; computed for the
    in-memory kinds).

    `split` selects the generated split for `shapes` specs; files hold one split each, so
    for them it is only recorded in `meta` when the file does not say.
    """
    if spec.startswith("shapes:"):
        return _open_shapes(spec, split).with_channel_stats()
    path = Path(spec)
    if path.suffix in (".beton", ".npz") and not path.is_file():
        raise InputError(f"dataset {spec!r}: no such file; write it with `biamat-engine prepare` "
                         f"or check the path")
    if path.suffix == ".beton":
        from loaders.beton import read_beton  # the FFCV-format reader; heavy, so loaded here
        return read_beton(path)
    if path.suffix == ".npz":
        return _open_npz(path, split).with_channel_stats()
    raise InputError(f"dataset {spec!r}: not a recognised spec; expected one of "
                     f"{', '.join(SPEC_FORMS)}")


def _open_shapes(spec: str, split: str) -> ArrayDataset:
    from loaders.sources.shapes import make_shapes

    kind, options = parse_shapes_spec(spec)
    return make_shapes(kind, split, **options)


def parse_shapes_spec(spec: str) -> tuple[str, dict[str, int | str]]:
    """`shapes:KIND?key=value&...` -> (KIND, {key: value}), integers but for `groups`; a
    InputError names the spec."""
    from loaders.sources.shapes import KINDS

    kind, _, query = spec.removeprefix("shapes:").partition("?")
    if kind not in KINDS:
        raise InputError(f"dataset {spec!r}: unknown shapes kind {kind!r}; expected "
                         f"shapes:primary or shapes:aux")
    options: dict[str, int | str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in _SHAPES_OPTIONS or not eq:
            raise InputError(f"dataset {spec!r}: bad option {item!r}; expected key=value with "
                             f"key in {_SHAPES_OPTIONS}, e.g. shapes:aux?n=2000&seed=3")
        if key in _SHAPES_WORDS:
            options[key] = value
            continue
        try:
            options[key] = int(value)
        except ValueError:
            raise InputError(f"dataset {spec!r}: option {key} must be an integer, got {value!r}")
    return kind, options


def shapes_spec(kind: str, options: dict[str, int | str]) -> str:
    """(KIND, {key: value}) -> `shapes:KIND?key=value&...`, the inverse of `parse_shapes_spec`."""
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"shapes:{kind}" + (f"?{query}" if query else "")


_NPZ_FORM = "a .npz dataset is numpy.savez(images=(N, H, H, 3) uint8, labels=(N,) integers, class_names=[...])"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the .npz at `path`; a file numpy cannot read (truncated, not a zip, pickled
    objects) is an InputError naming it, without numpy's advice to allow pickles."""
    import zipfile

    try:
        data = np.load(path, allow_pickle=False)
        arrays = None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                arrays = {k: data[k] for k in data.files if k in ("images", "labels", "class_names")}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise  # missing or unreadable: the OS error names the path
        raise InputError(f"dataset {str(path)!r}: not a readable .npz archive (truncated, damaged, or holding "
                         f"Python objects; {type(err).__name__}); {_NPZ_FORM}") from None
    if arrays is None:
        raise InputError(f"dataset {str(path)!r}: a single .npy array, not a .npz archive; {_NPZ_FORM}")
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        raise InputError(f"dataset {str(path)!r}: missing array(s) {missing}; a .npz dataset "
                         f"needs images (N, H, W, 3) uint8 and labels (N,)")
    return arrays


def _open_npz(path: Path, split: str) -> ArrayDataset:
    data = _read_npz(path)
    images, labels = data["images"], data["labels"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"dataset {str(path)!r}: labels are {labels.dtype} of shape {labels.shape}, expected "
                         f"(N,) integers (class indices); {_NPZ_FORM}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"dataset {str(path)!r}: images are {images.dtype} of shape {images.shape}, expected "
                         f"(N, H, W, 3) uint8 RGB; {_NPZ_FORM}")
    if images.shape[1] != images.shape[2]:
        raise InputError(f"dataset {str(path)!r}: images are {images.shape[1]}x{images.shape[2]}, the engine "
                         f"trains on square images; crop or resize them; {_NPZ_FORM}")
    if "class_names" in data:
        class_names = data["class_names"]
        if class_names.ndim != 1 or class_names.dtype.kind not in "US":
            raise InputError(f"dataset {str(path)!r}: class_names is {class_names.dtype} of shape "
                             f"{class_names.shape}, expected a list of names (one per class); {_NPZ_FORM}")
        names = [str(c) for c in class_names]
    else:
        names = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    return ArrayDataset(images, labels, names, name=path.stem,
                        meta={"source": str(path), "split": split})


def make_stream(dataset: ArrayDataset | str, *, backend: str, batch_size: int, device,
                train: bool, seed: int, drop_last: bool = False, rank: int = 0,
                world_size: int = 1, split: str | None = None,
                options: LoaderOptions = LoaderOptions()) -> ImageStream:
    """An `ImageStream` over `dataset` (an `ArrayDataset` or a spec for `open_dataset`) through
    `backend`. `split` picks the split of a spec (default: train when `train`, else test).
    Every backend takes the same arguments and the same `options`, passed on as they are."""
    common = dict(batch_size=batch_size, device=device, train=train, seed=seed,
                  drop_last=drop_last, rank=rank, world_size=world_size, options=options)
    split = split or ("train" if train else "test")
    if backend == "resident":
        from loaders.backends.resident import ResidentStream

        return ResidentStream(_in_memory(dataset, split), **common)
    if backend == "ffcv":
        if not (isinstance(dataset, (str, Path)) and str(dataset).endswith(".beton")):
            shown = dataset if isinstance(dataset, str) else f"in-memory dataset {dataset.name!r}"
            raise InputError(f"the ffcv backend reads .beton files, got {shown}; write one with "
                             f"`biamat-engine prepare` or use --loader resident")
        from loaders.backends.ffcv_backend import FfcvStream

        return FfcvStream(str(dataset), **common)
    if backend == "dali":
        from loaders.backends.dali_backend import DaliStream

        return DaliStream(_in_memory(dataset, split), **common)
    raise InputError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _in_memory(dataset: ArrayDataset | str, split: str) -> ArrayDataset:
    """The resident and DALI backends read host arrays: a spec is decoded here first."""
    return open_dataset(dataset, split) if isinstance(dataset, str) else dataset
