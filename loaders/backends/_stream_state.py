"""What the loader backends' streams share: the arguments every backend takes (checked and kept
alike by `ShardedStream`), counting an epoch's batches per rank, and the (epoch, position) state
a resume restores.

Every backend shards alike (the resident backend's rule, torch's DistributedSampler's): each rank
visits the same number of samples, the remainder dropped with `drop_last` and otherwise padded
with the order's first samples, so error messages and batch counts agree across backends.
"""

from __future__ import annotations

import numpy as np
import torch

from kernels.errors import InputError
from loaders.options import LoaderOptions
from loaders.types import DatasetInfo, check_label_range


def check_sharding(name: str, batch_size: int, rank: int, world_size: int) -> None:
    """InputError naming the dataset `name` unless batch_size >= 1; ValueError unless 0 <= rank < world_size."""
    if batch_size < 1:
        raise InputError(f"{name}: batch_size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"{name}: rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")


def samples_per_rank(num_samples: int, world_size: int, drop_last: bool) -> int:
    """Samples each rank visits per epoch, the same on every rank: DDP ranks that disagreed on
    the step count would hang in the last all-reduce."""
    if drop_last:
        return num_samples // world_size
    return -(-num_samples // world_size)


def batch_count(name: str, num_samples: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch on each rank (a short final batch counts unless `drop_last`); a
    InputError naming `name` when that is none."""
    per_rank = samples_per_rank(num_samples, world_size, drop_last)
    count = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
    if count == 0:
        raise InputError(
            f"{name}: {num_samples} samples over {world_size} rank(s) make no batch of "
            f"{batch_size}{' with drop_last' if drop_last else ''}; use a smaller batch size"
        )
    return count


class EpochPosition:
    """Mixin: `state_dict` / `load_state_dict` of a stream's place, {"epoch", "position"}.

    The stream keeps `_epoch`, `_position` (the next batch of that epoch), `_num_batches` (per
    epoch and rank), `_name` (the dataset or file, for messages) and `world_size` (its ranks)."""

    _epoch: int
    _position: int
    _num_batches: int
    _name: str
    world_size: int

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict, world_size: int | None = None) -> None:
        """Continues from `state`. `world_size` is the number of ranks that saved it when that is
        not this stream's: the position then moves to the same point of the epoch's order on this
        number of ranks (rounded down, so a few samples may come twice and none is skipped)."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if world_size is not None and world_size != self.world_size and position >= 0:
            # p batches on each of W ranks consumed the first p * B * W samples of the order.
            position = min(position * world_size // self.world_size, self._num_batches)
        if epoch < 0 or not 0 <= position <= self._num_batches:
            raise InputError(
                f"{self._name}: cannot resume at epoch {epoch}, saved position {position}: this stream "
                f"has {self._num_batches} batches per epoch; was the checkpoint written with another "
                f"dataset, batch size or world size?"
            )
        self._epoch, self._position = epoch, position


class ShardedStream(EpochPosition):
    """Base of every backend's stream (the `loaders.stream.ImageStream` contract): the dataset's
    `info`, the batch and shard arguments and the `LoaderOptions`, kept under the same names in
    every backend, and the epoch's batch count those imply.

    `name` is what error messages call the data (the dataset's name, or the .beton path);
    `labels` are the labels of the samples one epoch shards over the ranks, checked against the
    class count here for every backend, before any training (or run directory) starts."""

    def __init__(
        self, info: DatasetInfo, labels: np.ndarray, *, name: str, batch_size: int, device, train: bool,
        seed: int, drop_last: bool, rank: int, world_size: int, options: LoaderOptions,
    ) -> None:
        check_sharding(name, batch_size, rank, world_size)
        check_label_range(np.asarray(labels), info.num_classes, name)
        num_samples = len(labels)
        self.info = info
        self.options = options
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.samples_per_rank = samples_per_rank(num_samples, world_size, drop_last)
        self._name = name
        self._num_batches = batch_count(name, num_samples, world_size, batch_size, drop_last)
        self._epoch = 0
        self._position = 0

    def __len__(self) -> int:
        return self._num_batches
