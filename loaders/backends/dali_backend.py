"""The NVIDIA DALI loader backend: one dataset as an `ImageStream` whose augmentation runs in DALI.

Host-memory uint8 images (an `ArrayDataset`, or a `StreamedDataset` read a batch at a time for
data larger than RAM) enter a DALI pipeline through an external source; DALI pads, crops,
mirrors and converts them to float [0, 1] in HWC layout, on the GPU when `device` is CUDA
(`device_id` = its index) and on the CPU otherwise (`device_id=None`). The HWC batch is handed
to torch without a host round trip and viewed as a channels_last (B, 3, H, W) tensor.

Randomness lives outside DALI (see `loaders.backends.dali_plan`): the order, the crop offsets
and the flips are drawn from (seed, epoch, rank, batch index), by the resident backend's rule,
and fed as extra external-source inputs. DALI's own random operators keep their state inside
the pipeline, advanced by every prefetched batch, so a mid-epoch resume could not reproduce
them without replaying the epoch; with the draws fed in, a resume just starts the source at
the saved position.

Sharding (`rank`, `world_size`) and `drop_last` follow the resident backend; see
`loaders.backends.dali_plan.shard_order`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from kernels.errors import InputError
from loaders.backends._stream_state import ShardedStream
from loaders.backends.dali_pipeline import build_pipeline, import_dali
from loaders.backends.dali_plan import draw_crop_flip, shard_order
from loaders.backends.dali_source import StreamedDataset, batch_reader, image_shape
from loaders.options import LoaderOptions
from loaders.types import ArrayDataset

_DEFAULT_THREADS = 2  # DALI's CPU threads when LoaderOptions.workers is None


class DaliStream(ShardedStream):
    """One dataset through a DALI pipeline, yielding augmented (x, y) batches on `device`.

    Follows the `ImageStream` contract of `loaders.stream`: epoch `e` of rank `rank` always
    visits the same samples with the same augmentation, and the state is (epoch, position).
    With `train=False` the order is the dataset's and there is no augmentation. Of the
    `LoaderOptions` it uses `pad` and `workers` (DALI's num_threads, 2 when None); it ignores
    `kernel_impl` (the crop and flip are DALI operators). `prefetch_queue_depth` is DALI's own.
    """

    def __init__(
        self,
        dataset: ArrayDataset | StreamedDataset,
        *,
        batch_size: int,
        device: str | torch.device,
        train: bool,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        options: LoaderOptions = LoaderOptions(),
        prefetch_queue_depth: int = 2,
    ) -> None:
        self._dali = import_dali()  # fail here, with the install hint, not at the first batch
        self._read = batch_reader(dataset)  # a TypeError naming what was passed instead of a dataset
        super().__init__(dataset.info, dataset.labels, name=dataset.name, batch_size=batch_size, device=device,
                         train=train, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                         options=options)
        self._num_threads = _DEFAULT_THREADS if options.workers is None else options.workers
        if self._num_threads < 1 or prefetch_queue_depth < 1:
            raise InputError(
                f"DaliStream: workers (DALI's num_threads) and prefetch_queue_depth must be at least 1, "
                f"got {self._num_threads} and {prefetch_queue_depth} (data.num_workers sets workers)"
            )
        self._prefetch_queue_depth = prefetch_queue_depth
        self._labels = np.asarray(dataset.labels, dtype=np.int64)
        self._height, self._width = image_shape(dataset)
        self._device_id = self._dali_device_id(self.device)

    @staticmethod
    def _dali_device_id(device: torch.device) -> int | None:
        if device.type == "cpu":
            return None
        if device.type == "cuda":
            return device.index if device.index is not None else torch.cuda.current_device()
        raise ValueError(f"DaliStream runs on cpu or cuda devices, got {device}")

    def _order(self, epoch: int) -> np.ndarray:
        return shard_order(len(self._labels), seed=self.seed, epoch=epoch, shuffle=self.train,
                           rank=self.rank, world_size=self.world_size, drop_last=self.drop_last)

    def _batch_index(self, order: np.ndarray, batch: int) -> np.ndarray:
        return order[batch * self.batch_size:(batch + 1) * self.batch_size]

    def _read_batch(self, index: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(self._read(index))
        expected = (len(index), self._height, self._width, 3)
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(
                f"{self._name}: the reader returned {images.shape} {images.dtype} for "
                f"{len(index)} indices; it must return {expected} uint8 images in index order"
            )
        return images

    def _source(self, order: np.ndarray, epoch: int, first_batch: int, num_batches: int):
        """The external-source callback: DALI iteration i is batch first_batch + i."""

        def feed(info):
            batch = first_batch + info.iteration
            if batch >= num_batches:
                raise StopIteration
            index = self._batch_index(order, batch)
            images = self._read_batch(index)  # (b, H, W, 3) uint8
            if not self.train:
                return images
            draws = draw_crop_flip(len(index), batch_size=self.batch_size, pad=self.options.pad,
                                   seed=self.seed, epoch=epoch, rank=self.rank,
                                   batch_index=batch)
            starts = draws.offsets - np.int32(self.options.pad)  # (b, 2) slice start, may be negative
            return images, starts, draws.flips

        return feed

    def _to_torch(self, dali_batch) -> torch.Tensor:
        """(b, 3, H, W) float32 channels_last on the device, copied device-to-device."""
        dense = dali_batch.as_tensor()  # (b, H, W, 3)
        nhwc = torch.empty(tuple(dense.shape()), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        self._dali.feed_ndarray(dense, nhwc, cuda_stream=stream)
        return nhwc.permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW is channels_last

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, first_batch = self._epoch, self._position
        num_batches = len(self)
        if first_batch < num_batches:
            order = self._order(epoch)
            # A fresh pipeline per call: one left mid-epoch still holds prefetched batches of
            # its old position, and building a pipeline costs milliseconds, not an epoch.
            pipe = build_pipeline(
                self._source(order, epoch, first_batch, num_batches),
                batch_size=self.batch_size, height=self._height, width=self._width,
                augment=self.train, device_id=self._device_id, num_threads=self._num_threads,
                prefetch_queue_depth=self._prefetch_queue_depth,
            )
            for batch in range(first_batch, num_batches):
                (images,) = pipe.run()
                x = self._to_torch(images)  # (b, 3, H, W)
                labels = self._labels[self._batch_index(order, batch)]
                y = torch.from_numpy(labels).to(self.device)  # (b,)
                self._position = batch + 1
                yield x, y
            del pipe
        self._epoch, self._position = epoch + 1, 0
