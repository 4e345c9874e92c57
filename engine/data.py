"""From the data section of a config to the streams and the held-out set of a run."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import ConfigError, DataConfig
from engine.models.heads import CIFAR10_MEAN, CIFAR10_STD, PER_CHANNEL, PER_IMAGE
from loaders.datasets import make_stream, open_dataset
from loaders.images import to_device_images
from loaders.options import LoaderOptions
from loaders.stream import PairedStream, split_batch
from loaders.types import ArrayDataset, DatasetInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalization:
    """The per-channel mean and std a run's model normalises its [0, 1] inputs with, or per-image
    standardisation (mean 0 and std 1 then: the buffers do nothing)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    """Where they come from, for model.json and the export card."""
    kind: str = PER_CHANNEL
    """`engine.models.build`'s normalization: per-channel or per-image."""


def primary_normalization(mode: str, spec: str, info: DatasetInfo) -> Normalization:
    """The normalisation `model.normalization = mode` asks for, for the primary data `spec`
    whose stream reports `info`: its manifest's channel statistics for `primary` (computed from
    the data, with a warning, when a manifest predates them), or fixed constants."""
    if mode == "cifar10":
        return Normalization(tuple(CIFAR10_MEAN), tuple(CIFAR10_STD), "cifar10 constants (model.normalization)")
    if mode == "none":
        return Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "none: inputs as they are (model.normalization)")
    if mode == "per-image":
        return Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "per-image standardisation (model.normalization)",
                             PER_IMAGE)
    stats, source = info.channel_stats, f"per-channel statistics of the primary training data {info.name} ({spec})"
    if stats is None:
        log.warning("%s has no channel statistics in its manifest (written before they were): computing them "
                    "from the data; `biamat-engine prepare` it again to record them", spec)
        stats = open_dataset(spec, "train").with_channel_stats().info.channel_stats
        source += " (computed at start: the manifest predates them)"
    mean, std = stats
    if min(std) <= 0:
        raise ConfigError(f"{spec}: a colour channel of the primary data is constant (std {std}): "
                          "set model.normalization = cifar10 or none")
    return Normalization(tuple(mean), tuple(std), source)


@dataclass
class RunData:
    stream: PairedStream
    num_classes: int
    aux_classes: tuple[int, ...]
    class_names: list[str]
    aux_names: list[str]
    aux_class_names: list[list[str]]
    aux_related: list[list[bool] | None]
    """Per auxiliary dataset, the related/unrelated flag of each class where the data says so."""
    heldout_x: torch.Tensor
    """(n, 3, H, W) float in [0, 1], channels_last, on the device: fixed per-epoch eval subset."""
    heldout_y: torch.Tensor
    normalization: Normalization
    """What the model normalises its inputs with (model.normalization)."""
    omega_x: torch.Tensor | None = None
    """method.omega_when = accuracy: (n, 3, H, W) the slice of the primary *training* data held
    out of the training batches, on the device (`engine.omega_gate`); None otherwise."""
    omega_y: torch.Tensor | None = None
    omega_index: np.ndarray | None = None
    """The slice's indices in the primary training data (sorted)."""


def with_absolute_paths(data: DataConfig) -> DataConfig:
    """`data` with every dataset given as an existing relative path made absolute, so the run's
    config.toml still finds its data when the run is resumed or evaluated from another folder.
    Built-in specs (`shapes:primary`) stay as they are."""
    def absolute(spec: str) -> str:
        return str(Path(spec).resolve()) if spec and Path(spec).exists() else spec

    return dataclasses.replace(data, primary=absolute(data.primary), aux=[absolute(a) for a in data.aux],
                               test=absolute(data.test))


def held_out_spec(data: DataConfig) -> str:
    """The held-out set of per-epoch model selection: data.test, else a built-in set's own test split.
    (Not `test_...`: imported into a test module, pytest would collect it as a test.)"""
    if data.test:
        return data.test
    if data.primary.startswith("shapes:"):
        return data.primary  # the built-in sets generate their own test split
    raise ConfigError(
        f"data.test is empty and {data.primary!r} has no built-in test split: pass --test TEST.beton "
        "(model selection needs held-out data)"
    )


def heldout_subset(dataset: ArrayDataset, n: int, seed: int) -> np.ndarray:
    """A fixed random subset of indices, the same in every epoch and on resume."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(len(dataset))[: min(n, len(dataset))])


def check_pseudo_labelled(primary_spec: str, primary: DatasetInfo, aux_specs: list[str],
                          aux: list[DatasetInfo]) -> None:
    """Pseudo-labelled auxiliary data trains with primary labels: a ConfigError naming both files
    unless each auxiliary dataset has the primary class count (a warning where the names differ)."""
    for spec, info in zip(aux_specs, aux):
        if info.num_classes != primary.num_classes:
            raise ConfigError(
                f"method.aux_mode = pseudo trains the auxiliary data as primary data, but {spec!r} has "
                f"{info.num_classes} classes and the primary data {primary_spec!r} has {primary.num_classes}: "
                f"pseudo-label it first with a classifier of the primary classes "
                f"(`biamat-engine pseudo-label MODEL {spec} OUT.beton --top-k-per-class K`)"
            )
        if info.class_names != primary.class_names:
            log.warning("pseudo-labelled %s names its classes %s, the primary data %s %s: labels are "
                        "matched by index", spec, list(info.class_names[:4]), primary_spec,
                        list(primary.class_names[:4]))


def build_run_data(
    data: DataConfig, *, use_aux: bool, device: torch.device, seed: int, eval_n: int,
    kernel_impl: str, rank: int = 0, world_size: int = 1, normalization: str = "primary",
    pseudo_labelled: bool = False, omega_holdout: int = 0,
) -> RunData:
    """The run's streams and held-out set. `pseudo_labelled` (aux_mode pseudo): the auxiliary data
    trains as primary data, so it must have the primary classes and gets no head of its own
    (`aux_classes` is empty). `omega_holdout` > 0 (method.omega_when = accuracy): that many primary
    training samples, drawn from `seed`, are left out of the primary stream and kept as
    `omega_x` / `omega_y`."""
    options = LoaderOptions(workers=data.num_workers, kernel_impl=kernel_impl)

    def stream(spec, batch_size: int, stream_seed: int, drop_last: bool):
        return make_stream(spec, backend=data.loader, batch_size=batch_size, device=device, train=True,
                           seed=stream_seed, drop_last=drop_last, rank=rank, world_size=world_size, options=options)

    omega = None
    if omega_holdout:
        omega, trained = _carve_primary(data, omega_holdout, seed)
        primary = stream(trained, data.batch_size, seed, data.drop_last)
        # The model normalises with the whole training set's statistics, as without the slice.
        primary_info = omega[2]
    else:
        primary = stream(data.primary, data.batch_size, seed, data.drop_last)
        primary_info = primary.info
    aux_specs = data.aux if use_aux else []
    # Auxiliary streams cycle forever, so dropping a ragged last batch loses nothing and keeps
    # every step's auxiliary batch the same size.
    aux = [stream(spec, bs, seed + 1000 * (i + 1), True)
           for i, (spec, bs) in enumerate(zip(aux_specs, split_batch(data.aux_batch_size, len(aux_specs))))]
    test = open_dataset(held_out_spec(data), "test")
    size = primary.info.image_size
    if test.num_classes != primary.info.num_classes:
        raise ConfigError(
            f"held-out data {held_out_spec(data)!r} has {test.num_classes} classes, the primary data "
            f"{data.primary!r} has {primary.info.num_classes}: they must be splits of the same dataset"
        )
    if test.image_size != size:
        raise ConfigError(f"held-out images are {test.image_size}px, primary images {size}px")
    for spec, s in zip(aux_specs, aux):
        if s.info.image_size != size:
            raise ConfigError(
                f"auxiliary data {spec!r} has {s.info.image_size}px images, the primary {size}px: "
                f"prepare it with --size {size}"
            )
    if pseudo_labelled:
        check_pseudo_labelled(data.primary, primary.info, aux_specs, [s.info for s in aux])
    index = heldout_subset(test, eval_n, seed)
    aux_info = [s.info for s in aux]
    return RunData(
        stream=PairedStream(primary, aux),
        num_classes=primary.info.num_classes,
        aux_classes=() if pseudo_labelled else tuple(i.num_classes for i in aux_info),
        class_names=list(test.class_names),
        aux_names=[i.name for i in aux_info],
        aux_class_names=[list(i.class_names) for i in aux_info],
        aux_related=[i.related for i in aux_info],
        heldout_x=to_device_images(test.images[index], device),
        heldout_y=torch.from_numpy(test.labels[index]).to(device),
        normalization=primary_normalization(normalization, data.primary, primary_info),
        omega_x=None if omega is None else to_device_images(omega[0].images, device),
        omega_y=None if omega is None else torch.from_numpy(omega[0].labels).to(device),
        omega_index=None if omega is None else omega[1],
    )


def _carve_primary(data: DataConfig, size: int, seed: int) -> tuple[tuple[ArrayDataset, np.ndarray, DatasetInfo],
                                                                       ArrayDataset]:
    """((held-out slice, its indices, the whole set's info), the rest to train on) of the primary
    training data, split by `engine.omega_gate.carve_holdout`."""
    from engine.omega_gate import carve_holdout

    if data.loader == "ffcv":
        raise ConfigError(
            'method.omega_when = "accuracy" holds a slice of the primary training data out of the '
            "training batches, which the ffcv backend reads straight from the .beton file: use "
            "--loader resident or dali for this run"
        )
    full = open_dataset(data.primary, "train")
    try:
        train_index, held_index = carve_holdout(len(full), size, seed)
    except ConfigError as err:
        raise ConfigError(f"{data.primary}: {err}") from None
    return (full.subset(held_index), held_index, full.info), full.subset(train_index)
