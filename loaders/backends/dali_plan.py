"""What each batch of a DALI epoch holds, computed from (seed, epoch, rank) alone.

The DALI stream keeps all randomness out of DALI: the sample order and the crop offsets and
flips are drawn here and fed to the pipeline as external-source inputs. That keeps every batch
a pure function of (seed, epoch, rank, batch index), so resuming mid-epoch only needs the
position, and tests can replay the exact augmentation with a numpy reference.

The draws follow the resident backend's rule (same seed derivation, same generator calls), so
for one seed `--loader dali` and `--loader resident` train on the same batches; the tests
check that the two streams agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from loaders.backends._stream_state import samples_per_rank
from loaders.seeds import derive_seed

# Tags that keep the permutation and augmentation seed streams apart (as in the resident one).
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def shard_order(
    num_samples: int, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
    drop_last: bool,
) -> np.ndarray:
    """The (samples_per_rank,) int64 sample indices rank `rank` visits in `epoch`, in order.

    Every rank draws the same permutation from (seed, epoch) and takes every `world_size`-th
    entry starting at its rank, so the shards are disjoint. When `num_samples` does not divide
    evenly, `drop_last` drops the permutation's last few samples (different ones each shuffled
    epoch); otherwise the permutation wraps around to its first samples, which are then seen
    twice in that epoch (torch's DistributedSampler rule).
    """
    if shuffle:
        generator = torch.Generator().manual_seed(derive_seed(seed, epoch, _ORDER_STREAM))
        order = torch.randperm(num_samples, generator=generator).numpy()
    else:
        order = np.arange(num_samples, dtype=np.int64)
    total = samples_per_rank(num_samples, world_size, drop_last) * world_size
    if total > num_samples:
        order = np.concatenate([order, order[:total - num_samples]])
    return order[:total][rank::world_size]


@dataclass(frozen=True)
class CropFlip:
    """The augmentation of one batch: pad, crop at `offsets`, then mirror where `flips` is 1."""

    offsets: np.ndarray
    """(b, 2) int32 (row, column) of the crop's top-left corner in the padded image, in
    [0, 2 * pad]; `pad` means no shift."""
    flips: np.ndarray
    """(b,) int32, 1 where the crop is mirrored left-right."""


def draw_crop_flip(
    batch_len: int, *, batch_size: int, pad: int, seed: int, epoch: int, rank: int,
    batch_index: int,
) -> CropFlip:
    """The crop offsets and flips of batch `batch_index`, the same on every call.

    A full batch's worth is drawn even for a short final batch, which takes the first
    `batch_len` rows, so a batch's draws do not depend on how many samples it holds.
    """
    generator = torch.Generator().manual_seed(
        derive_seed(seed, epoch, _AUGMENT_STREAM, rank, batch_index))
    offsets = torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator)
    flips = torch.rand(batch_size, generator=generator) < 0.5
    return CropFlip(offsets[:batch_len].numpy().astype(np.int32),
                    flips[:batch_len].numpy().astype(np.int32))
