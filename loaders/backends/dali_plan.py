"""What each batch of a DALI epoch holds, computed from (seed, epoch, rank) alone.

The DALI stream keeps all randomness out of DALI: the sample order and the crop offsets and
flips are drawn here with numpy and fed to the pipeline as external-source inputs. That keeps
every batch a pure function of (seed, epoch, rank, batch index), so resuming mid-epoch only
needs the position, and tests can replay the exact augmentation with a numpy reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Last word of the seed material, so the order and the augmentation draws never share a stream.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def shard_order(
    num_samples: int, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int
) -> np.ndarray:
    """The sample indices rank `rank` visits in `epoch`, in visiting order.

    Every rank draws the same permutation from (seed, epoch) and takes every `world_size`-th
    entry, so the shards are disjoint. When `num_samples` does not divide evenly, the
    permutation wraps around its start (as torch's DistributedSampler does) so all ranks see
    the same number of samples and hence the same number of batches: DDP ranks that disagree
    on the step count would hang in the last all-reduce. Those few wrapped samples are the only
    ones visited twice in an epoch.
    """
    if shuffle:
        rng = np.random.default_rng([seed, epoch, _ORDER_STREAM])
        order = rng.permutation(num_samples)
    else:
        order = np.arange(num_samples)
    if world_size > 1 and num_samples > 0:
        per_rank = shard_size(num_samples, world_size)
        order = np.resize(order, per_rank * world_size)[rank::world_size]
    return order.astype(np.int64, copy=False)


def shard_size(num_samples: int, world_size: int) -> int:
    """Samples each rank visits per epoch (the same on every rank)."""
    return -(-num_samples // world_size)


def batch_count(shard_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one epoch of a shard; a short final batch counts unless `drop_last`."""
    if drop_last:
        return shard_size // batch_size
    return -(-shard_size // batch_size)


@dataclass(frozen=True)
class CropFlip:
    """The augmentation of one batch: pad, crop at `offsets`, then mirror where `flips` is 1."""

    offsets: np.ndarray
    """(B, 2) int32 (row, column) of the crop's top-left corner in the padded image, in
    [0, 2 * pad]; `pad` means no shift."""
    flips: np.ndarray
    """(B,) int32, 1 where the crop is mirrored left-right."""


def draw_crop_flip(
    batch_len: int, *, pad: int, seed: int, epoch: int, rank: int, batch_index: int
) -> CropFlip:
    """The crop offsets and flips of batch `batch_index`, the same on every call."""
    rng = np.random.default_rng([seed, epoch, rank, batch_index, _AUGMENT_STREAM])
    offsets = rng.integers(0, 2 * pad + 1, size=(batch_len, 2)).astype(np.int32)
    flips = rng.integers(0, 2, size=batch_len).astype(np.int32)
    return CropFlip(offsets, flips)
