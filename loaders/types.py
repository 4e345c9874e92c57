"""The records that cross the loader boundary: a decoded dataset, the facts a stream reports
about its dataset, and a training batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.errors import InputError
from loaders.images import channel_stats


def check_label_range(labels: np.ndarray, num_classes: int, name: str) -> None:
    """InputError naming the dataset `name` when a label of (N,) `labels` falls outside [0, num_classes)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"{name}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]; "
            f"check the class list"
        )


CHANNEL_STATS_KEYS = ("channel_mean", "channel_std")
"""Where `meta` (and a .beton manifest) keeps the per-channel mean and std of the pixels."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine reads about a stream's dataset, the same whichever backend reads it.

    Every backend's stream carries one as `info`: the in-memory backends take it from their
    dataset, the streamed ones from the .beton manifest (`loaders.beton.beton_info`), which is
    also where `read_beton` takes an in-memory dataset's name, classes and meta from."""

    name: str
    """Short name used in logs, manifests and model cards (`cifar10`, `shapes-aux`, ...)."""
    class_names: tuple[str, ...]
    """One name per class; its length is the class count."""
    image_size: int
    """H == W of every image, in pixels."""
    meta: dict = field(default_factory=dict)
    """Free-form facts from the source or manifest (split, format, related classes, ...)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def related(self) -> list[bool] | None:
        """Per class, whether it resembles a primary class, where the data records it (the
        built-in shapes auxiliary set does); None where it does not."""
        related = self.meta.get("related")
        return None if related is None else [bool(r) for r in related]

    @property
    def channel_stats(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) of the pixels in [0, 1] units, where the data records them
        (`prepare` writes them into the manifest; `open_dataset` computes them for the built-in
        and .npz sets); None where it does not (a manifest written before they were)."""
        mean, std = self.meta.get("channel_mean"), self.meta.get("channel_std")
        return None if mean is None or std is None else ([float(v) for v in mean], [float(v) for v in std])


class DescribedDataset:
    """Mixin of the dataset records (`ArrayDataset`, the DALI backend's `StreamedDataset`): the
    class count and the `DatasetInfo` a stream over them reports, from their own fields."""

    name: str
    class_names: list[str]
    image_size: int
    meta: dict

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, tuple(self.class_names), self.image_size, dict(self.meta))


@dataclass
class ArrayDataset(DescribedDataset):
    """A whole image-classification split held in host memory.

    Every source decodes into this, the .beton writer consumes it, and the resident and DALI
    backends are fed from it.
    """

    images: np.ndarray
    """(N, H, W, 3) uint8, RGB, height-width-channel as the publishers ship pixels."""
    labels: np.ndarray
    """(N,) int64 in [0, num_classes)."""
    class_names: list[str]
    """One name per class; its length is the class count."""
    name: str = "dataset"
    """Short name used in logs and manifests (`cifar10`, `shapes-aux`, ...)."""
    meta: dict = field(default_factory=dict)
    """Free-form facts worth keeping in a manifest (split, related classes, checksums)."""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise InputError(
                f"{self.name}: images must be (N, H, W, 3) uint8, got "
                f"{self.images.shape} {self.images.dtype}"
            )
        if self.labels.shape != (len(self.images),):
            raise InputError(
                f"{self.name}: {len(self.images)} images but labels have shape {self.labels.shape}"
            )
        self.labels = self.labels.astype(np.int64, copy=False)
        check_label_range(self.labels, self.num_classes, self.name)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray, name: str | None = None) -> "ArrayDataset":
        # The whole set's channel statistics are not the subset's.
        meta = {k: v for k, v in self.meta.items() if k not in CHANNEL_STATS_KEYS}
        return ArrayDataset(self.images[index], self.labels[index], list(self.class_names), name or self.name, meta)

    def with_channel_stats(self) -> "ArrayDataset":
        """Records the images' per-channel statistics in `meta` (once) and returns self."""
        if "channel_mean" not in self.meta:
            stats = channel_stats(self.images)
            if stats is not None:
                self.meta["channel_mean"], self.meta["channel_std"] = stats
        return self


@dataclass
class Batch:
    """What every loader backend yields, already on the training device."""

    x_pri: torch.Tensor
    """(B, 3, H, W) float in [0, 1], channels_last."""
    y_pri: torch.Tensor
    """(B,) int64 primary labels."""
    x_aux: torch.Tensor
    """(Ba, 3, H, W) float in [0, 1], channels_last; Ba may be 0 when there is no aux data."""
    y_aux: torch.Tensor
    """(Ba,) int64 labels in each auxiliary dataset's own classes."""
    aux_source: torch.Tensor
    """(Ba,) int64 index of the auxiliary dataset each sample came from; sorted ascending."""
    aux_sizes: tuple[int, ...] = ()
    """Samples of each auxiliary dataset, in order (known on the host: no device sync); the
    paired stream fills it. Read it through `aux_split`."""

    def aux_split(self, n_sources: int) -> list[int]:
        """How many of x_aux's rows belong to each of the `n_sources` auxiliary datasets, in
        order: the sizes to split x_aux, y_aux and their logits by, for the engine's objectives
        and the reference steps alike. A batch built without `aux_sizes` counts `aux_source`
        instead, which waits for the device."""
        if self.aux_sizes:
            return list(self.aux_sizes)
        return torch.bincount(self.aux_source, minlength=n_sources).tolist()
