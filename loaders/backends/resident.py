"""The resident backend: the whole dataset lives on the device as one uint8 tensor.

CIFAR-sized data (50k x 32 x 32 x 3 = 150 MB) fits on any GPU many times over, so after one
upload every batch is a device-side gather plus the crop/flip kernel: no worker processes, no
host round trips, and the step never waits on the loader. On the CPU it is the fastest
backend too, which is why the tests and the demo use it.

Determinism: epoch `e` of a stream with seed `s` always visits the same order with the same
augmentation. The order comes from a CPU generator seeded from (s, e); the crop offsets and
flips of batch `k` come from a generator seeded from (s, e, rank, k), so resuming at any
batch reproduces exactly the batches an uninterrupted run would have produced.

Sharding (world_size > 1): every rank draws the same permutation and takes every
world_size-th sample from it, starting at its rank, so shards are disjoint and each rank has
the same number of batches. When N is not divisible by world_size, `drop_last=True` drops
the last N mod world_size samples of the permutation (different ones each shuffled epoch);
`drop_last=False` instead pads the permutation with its first samples, so those few are seen
twice in that epoch (the same rule as torch's DistributedSampler). Within a rank,
`drop_last=True` also drops a final partial batch.
"""

from __future__ import annotations

from typing import Iterator

import torch

from kernels.augment import crop_flip
from kernels.errors import InputError
from loaders.backends._stream_state import ShardedStream
from loaders.images import unit_images
from loaders.options import LoaderOptions
from loaders.seeds import derive_seed
from loaders.types import ArrayDataset

# Tags that keep the permutation and augmentation seed streams apart.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


class ResidentStream(ShardedStream):
    """One `ArrayDataset` held on `device`, yielding augmented (x, y) batches.

    Implements `loaders.stream.ImageStream`: x is (B, 3, H, W) float32 in [0, 1],
    channels_last; y is (B,) int64; both on `device`. Of the `LoaderOptions` it uses `pad` and
    `kernel_impl`; `workers` has nothing to do here (batches are made on the device).
    """

    def __init__(self, dataset: ArrayDataset, *, batch_size: int, device, train: bool, seed: int,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 options: LoaderOptions = LoaderOptions()) -> None:
        super().__init__(dataset.info, dataset.labels, name=dataset.name, batch_size=batch_size, device=device,
                         train=train, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                         options=options)
        if seed < 0:
            raise InputError(f"{dataset.name}: seed must be >= 0, got seed={seed}")
        self.dataset = dataset
        self._images = _upload(torch.from_numpy(dataset.images), self.device)  # (N, H, W, 3) uint8
        self._labels = _upload(torch.from_numpy(dataset.labels), self.device)  # (N,) int64

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self._epoch, self._position
        index = self.batch_indices(epoch)  # (samples_per_rank,) int64 on the CPU
        if start < self._num_batches:
            # One transfer per epoch for the sample order; batches slice it on the device.
            index_dev = _upload(index, self.device)
            if self.train:
                offsets, flips = self._augment_params(epoch, start)
                offsets, flips = _upload(offsets, self.device), _upload(flips, self.device)
        for k in range(start, self._num_batches):
            rows = index_dev[k * self.batch_size:(k + 1) * self.batch_size]  # (B,)
            images = self._images.index_select(0, rows)  # (B, H, W, 3) uint8
            labels = self._labels.index_select(0, rows)  # (B,)
            if self.train:
                b = len(rows)
                x = crop_flip(images, offsets[k - start, :b], flips[k - start, :b], self.options.pad,
                              impl=self.options.kernel_impl)
            else:
                x = unit_images(images)  # (B, 3, H, W)
            self._position = k + 1
            yield x, labels
        self._epoch, self._position = epoch + 1, 0

    def batch_indices(self, epoch: int) -> torch.Tensor:
        """The dataset indices this rank visits in `epoch`, in order (CPU int64); batch k is
        the slice [k * batch_size, (k + 1) * batch_size)."""
        n = len(self.dataset)
        if self.train:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _ORDER_STREAM))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:  # pad with the permutation's first samples (see the module docstring)
            order = torch.cat([order, order[: total - n]])
        shard = order[:total][self.rank::self.world_size]
        if self.drop_last:
            shard = shard[: self._num_batches * self.batch_size]
        return shard

    def _augment_params(self, epoch: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop offsets (nb, B, 2) and flips (nb, B) for batches start.. of `epoch`."""
        params = [self.batch_augmentation(epoch, k) for k in range(start, self._num_batches)]
        return torch.stack([p[0] for p in params]), torch.stack([p[1] for p in params])

    def batch_augmentation(self, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The crop offsets (B, 2) int64 in [0, 2*pad] and flips (B,) bool that training batch
        `batch` of `epoch` uses (CPU; a final partial batch uses the first rows). Each batch
        has its own generator, so any batch can be reproduced on its own."""
        gen = torch.Generator().manual_seed(
            derive_seed(self.seed, epoch, _AUGMENT_STREAM, self.rank, batch))
        offsets = torch.randint(0, 2 * self.options.pad + 1, (self.batch_size, 2), generator=gen)
        flips = torch.rand(self.batch_size, generator=gen) < 0.5
        return offsets, flips


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device. On CUDA through pinned memory so the copy is asynchronous."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
