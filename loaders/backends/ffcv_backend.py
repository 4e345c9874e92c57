"""The FFCV backend: batches decoded and augmented by FFCV's compiled pipeline from a .beton.

One `ffcv.loader.Loader` per dataset. Decoding (raw RGB), the random crop (zero pad 4) and the
horizontal flip run inside FFCV's numba-compiled, multi-threaded pipeline; the uint8 batch goes
to the device non-blocking and becomes float [0, 1] channels-last there (uint8 is a quarter of
the bytes of float32 on the host-to-device link).

Determinism (the ImageStream contract): FFCV's own augmentations draw from numba's unseeded
per-thread generators and its orders need torch.distributed for sharding, so this stream sets
both itself. The visiting order of epoch `e` is a permutation seeded by (seed, e), sharded like
the resident backend (every rank takes every world_size-th sample; padding or dropping the
remainder like DistributedSampler). The crop offset and flip of a sample are a hash of (seed, e,
sample id), so they do not depend on threads, batch boundaries or where a run resumed.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch

from loaders.backends._stream_state import ShardedStream
from loaders.seeds import derive_seed
from loaders.beton import BetonIndex, beton_info
from loaders.images import unit_images
from loaders.options import LoaderOptions, available_cores

_INSTALL_HINT = "the ffcv backend needs ffcv: pip install --no-build-isolation 'biamat-engine[ffcv]' (see scripts/setup.sh)"
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1
ORDERS = ("random", "quasi_random", "sequential")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z):
    """SplitMix64's finaliser on uint64 (a numpy scalar/array here, a numba uint64 when jitted)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _augment_key(seed: int, epoch: int) -> np.uint64:
    return np.uint64(derive_seed(seed, epoch, _AUGMENT_STREAM))


def augment_params(seed: int, epoch: int, sample_ids: np.ndarray, pad: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The (dy, dx) offsets in [0, 2*pad] and flips the FFCV pipeline applies to `sample_ids`
    in `epoch`: (B, 2) int64 and (B,) bool, in kernels.augment.crop_flip's convention."""
    with np.errstate(over="ignore"):
        r = _splitmix64(_augment_key(seed, epoch) + np.asarray(sample_ids, dtype=np.uint64) * _GOLDEN)
    span = np.uint64(2 * pad + 1)
    offsets = np.stack([r % span, (r >> np.uint64(16)) % span], axis=1).astype(np.int64)
    return offsets, ((r >> np.uint64(32)) & np.uint64(1)).astype(bool)


def _crop_flip_operation(pad: int, key: np.ndarray):
    """An FFCV Operation: padded random crop + flip of a (B, H, W, 3) uint8 batch, per-sample
    parameters from `augment_params` (the same hash, jitted).

    `key` is a (1,) uint64 array the stream rewrites each epoch. Numba freezes captured arrays
    into compile-time constants, so the compiled code reads the key through its address instead:
    one pipeline compilation serves every epoch. The caller keeps `key` alive."""
    import numba
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation
    from ffcv.utils import cast_int_to_byte_ptr

    if key.dtype != np.uint64 or key.shape != (1,) or not key.flags.c_contiguous:
        raise ValueError(f"key must be a contiguous (1,) uint64 array, got {key.dtype} {key.shape}")
    mix = numba.njit(_splitmix64)
    address = key.ctypes.data

    @numba.njit
    def read_key():
        raw = numba.carray(cast_int_to_byte_ptr(address), (8,), np.uint8)
        value = np.uint64(0)
        for i in range(8):  # little-endian uint64, as numpy stores it on x86 and ARM
            value |= np.uint64(raw[i]) << np.uint64(8 * i)
        return value

    class SeededCropFlip(Operation):
        def generate_code(self):
            my_range = Compiler.get_iterator()
            span, golden, p = np.uint64(2 * pad + 1), _GOLDEN, pad

            def crop_flip(images, dst, indices):
                n, h, w = images.shape[0], images.shape[1], images.shape[2]
                epoch_key = read_key()
                for i in my_range(n):
                    r = mix(epoch_key + np.uint64(indices[i]) * golden)
                    dy = np.int64(r % span)
                    dx = np.int64((r >> np.uint64(16)) % span)
                    flip = ((r >> np.uint64(32)) & np.uint64(1)) == 1
                    for y in range(h):
                        sy = y + dy - p
                        for x in range(w):
                            sx = (w - 1 - x if flip else x) + dx - p
                            if 0 <= sy < h and 0 <= sx < w:
                                dst[i, y, x] = images[i, sy, sx]
                            else:
                                dst[i, y, x] = 0
                return dst

            crop_flip.is_parallel = True
            crop_flip.with_indices = True
            return crop_flip

        def declare_state_and_memory(self, previous_state):
            return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    return SeededCropFlip()


class _ExplicitOrder:
    """Stands in for FFCV's traversal order: hands the Loader the order this stream chose."""

    def __init__(self, order: np.ndarray) -> None:
        self.order = order

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order


class FfcvStream(ShardedStream):
    """One .beton through FFCV, yielding (x, y) batches on `device` (see loaders.stream).

    Of the `LoaderOptions` it uses `pad` and `workers` (FFCV's worker threads, one per core this
    process may use when None: `available_cores`); it ignores `kernel_impl` (the crop and flip are compiled into FFCV's pipeline).
    `os_cache`, `order`, `batches_ahead` and `indices` (a subset of the file) are FFCV's own."""

    def __init__(
        self, path: str | os.PathLike, *, batch_size: int, device, train: bool, seed: int,
        drop_last: bool = False, rank: int = 0, world_size: int = 1, options: LoaderOptions = LoaderOptions(),
        os_cache: bool = True, order: str = "random", batches_ahead: int = 3,
        indices: Sequence[int] | None = None,
    ) -> None:
        try:
            import ffcv  # noqa: F401
        except ImportError as err:
            raise ImportError(f"{_INSTALL_HINT} ({err})") from None
        if order not in ORDERS:
            raise ValueError(f"{path}: order must be one of {ORDERS}, got {order!r}")
        self.path = str(path)
        index = BetonIndex(path)
        self.samples = np.arange(index.num_samples, dtype=np.uint64) if indices is None else np.asarray(indices, np.uint64)
        if len(self.samples) and self.samples.max() >= index.num_samples:
            raise ValueError(f"{path}: indices reach {self.samples.max()}, the file holds {index.num_samples} samples")
        labels = index.metadata["label"][self.samples.astype(np.int64)].astype(np.int64)  # read without decoding pixels
        super().__init__(beton_info(index), labels, name=self.path, batch_size=batch_size, device=device,
                         train=train, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                         options=options)
        self.order = order if train else "sequential"
        # Which page each sample's pixels sit on, for the page-local quasi-random order.
        self._pages = index.metadata["image"]["data_ptr"] // np.uint64(index.page_size)
        self._key = np.zeros(1, dtype=np.uint64)  # read by the compiled crop/flip at run time
        self._loader = self._build_loader(options.workers or available_cores(), os_cache, batches_ahead)

    def _build_loader(self, num_workers: int, os_cache: bool, batches_ahead: int):
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        image_ops = [SimpleRGBImageDecoder()]
        if self.train:
            image_ops.append(_crop_flip_operation(self.options.pad, self._key))
        image_ops.append(ToTensor())
        label_ops = [IntDecoder(), ToTensor(), Squeeze()]
        if self.device.type != "cpu":
            image_ops.append(ToDevice(self.device, non_blocking=True))
            label_ops.append(ToDevice(self.device, non_blocking=True))
        loader = Loader(
            self.path, batch_size=self.batch_size, num_workers=num_workers, os_cache=os_cache,
            order=OrderOption.SEQUENTIAL, seed=self.seed, drop_last=False, batches_ahead=batches_ahead,
            pipelines={"image": image_ops, "label": label_ops},
        )
        loader.traversal_order = _ExplicitOrder(self.samples)
        return loader

    def batch_indices(self, epoch: int) -> np.ndarray:
        """The sample ids this rank visits in `epoch`, in order; batch k is [k*B, (k+1)*B)."""
        n = len(self.samples)
        if self.order == "sequential":
            order = self.samples
        else:
            rng = np.random.default_rng(derive_seed(self.seed, epoch, _ORDER_STREAM))
            if self.order == "random":
                order = self.samples[rng.permutation(n)]
            else:
                order = self._quasi_random(rng)
        total = self.samples_per_rank * self.world_size
        if total > n:  # pad with the order's first samples, as DistributedSampler does
            order = np.concatenate([order, order[: total - n]])
        return order[:total][self.rank :: self.world_size]

    def _quasi_random(self, rng: np.random.Generator) -> np.ndarray:
        """Shuffled pages, then shuffled samples within runs of a few pages: a random-looking
        order that reads the file a few pages at a time (for os_cache=False on big data)."""
        pages = self._pages[self.samples]
        unique = np.unique(pages)
        page_rank = np.empty(int(unique.max()) + 1, dtype=np.int64)
        page_rank[unique] = rng.permutation(len(unique))
        group = page_rank[pages] // 4  # four pages per shuffling window
        jitter = rng.random(len(self.samples))
        return self.samples[np.lexsort((jitter, group))]

    def _prepare_epoch(self, epoch: int, order: np.ndarray) -> None:
        self._loader.traversal_order = _ExplicitOrder(order)
        self._key[0] = _augment_key(self.seed, epoch)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self._epoch, self._position
        order = self.batch_indices(epoch)
        if self.drop_last:
            order = order[: self._num_batches * self.batch_size]
        remaining = order[start * self.batch_size :]
        if len(remaining):
            self._prepare_epoch(epoch, remaining)
            iterator = iter(self._loader)
            try:
                for k, (images, labels) in enumerate(iterator, start):
                    # (B, H, W, 3) uint8 in a buffer FFCV reuses: the float copy detaches it.
                    x = unit_images(images)  # (B, 3, H, W) channels_last
                    y = labels.reshape(-1).to(torch.int64, copy=True)  # (B,)
                    self._position = k + 1
                    yield x, y
            finally:
                iterator.close()
        self._epoch, self._position = epoch + 1, 0
