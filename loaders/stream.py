"""The stream contracts: one dataset through one backend, and the primary/auxiliary pairing.

An `ImageStream` is deterministic given its seed: epoch `e` always visits the same order with
the same augmentation, so a stream's whole state is `(epoch, position)` and resuming means
skipping to that position. Every backend (resident, ffcv, dali) honours this.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import torch

from kernels.errors import InputError
from loaders.types import Batch, DatasetInfo


class ImageStream(Protocol):
    """One dataset through one backend, yielding augmented batches on the device.

    Every backend's constructor takes the same arguments (dataset, batch_size, device, train,
    seed, drop_last, rank, world_size and a `LoaderOptions`); `loaders.datasets.make_stream`
    builds one by backend name."""

    batch_size: int
    """Samples per batch (a final partial batch may hold fewer unless drop_last)."""
    info: DatasetInfo
    """The dataset's name, class names, image size and meta (e.g. related classes): all the
    engine needs to know about the data, whichever backend reads it."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the current epoch from the saved position: (x, y) with x (B, 3, H, W)
        float in [0, 1] channels_last and y (B,) int64. The position advances before each
        batch is yielded, so a state_dict taken between batches resumes after the last one
        handed out; exhausting the iterator moves the stream to the next epoch."""

    def state_dict(self) -> dict:
        """`{"epoch": int, "position": int}` plus whatever the backend needs."""

    def load_state_dict(self, state: dict, world_size: int | None = None) -> None:
        """Continue from a state returned by `state_dict`; `world_size` names the number of ranks
        that saved it when that differs from this stream's (the position is then rescaled)."""


def split_batch(total: int, parts: int) -> list[int]:
    """Splits `total` samples over `parts` streams as evenly as possible, earlier ones first:
    how a run's auxiliary batch is shared between its auxiliary datasets (the batch sizes of
    their streams, which each `Batch` then records as `aux_sizes`)."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class PairedStream:
    """Interleaves the primary stream with the auxiliary ones.

    One pass of the primary stream is one epoch; each auxiliary stream cycles through its own
    shuffled epochs, so every step gets a primary batch and a full auxiliary batch, its samples
    sorted by auxiliary dataset (`aux_source`).
    """

    def __init__(self, primary: ImageStream, aux: Sequence[ImageStream] = ()) -> None:
        self.primary = primary
        self.aux = list(aux)
        self._aux_iters: list[Iterator | None] = [None] * len(self.aux)

    def __len__(self) -> int:
        return len(self.primary)

    @property
    def aux_sizes(self) -> tuple[int, ...]:
        """Samples each auxiliary dataset contributes to a step, in `aux_source` order."""
        return tuple(s.batch_size for s in self.aux)

    def _next_aux(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(2):  # a fresh epoch always has at least one batch
            if self._aux_iters[i] is None:
                self._aux_iters[i] = self.aux[i].epoch()
            try:
                return next(self._aux_iters[i])
            except StopIteration:
                self._aux_iters[i] = None
        raise RuntimeError(f"auxiliary stream {i} yielded no batch in a whole epoch")

    def __iter__(self) -> Iterator[Batch]:
        for x_pri, y_pri in self.primary.epoch():
            xs, ys, sources = [], [], []
            for i in range(len(self.aux)):
                x, y = self._next_aux(i)
                xs.append(x)
                ys.append(y)
                sources.append(torch.full_like(y, i))
            if xs:
                x_aux = torch.cat(xs).contiguous(memory_format=torch.channels_last)
                y_aux, aux_source = torch.cat(ys), torch.cat(sources)
            else:
                x_aux = x_pri.new_empty((0,) + tuple(x_pri.shape[1:]))
                y_aux = y_pri.new_empty((0,))
                aux_source = y_pri.new_empty((0,))
            yield Batch(x_pri, y_pri, x_aux, y_aux, aux_source, tuple(len(y) for y in ys))

    def state_dict(self) -> dict:
        return {
            "primary": self.primary.state_dict(),
            "aux": [s.state_dict() for s in self.aux],
        }

    def load_state_dict(self, state: dict, world_size: int | None = None) -> None:
        """Continues from `state`; `world_size`: the number of ranks that saved it (see
        `ImageStream.load_state_dict`)."""
        if len(state["aux"]) != len(self.aux):
            raise InputError(
                f"checkpoint has {len(state['aux'])} auxiliary streams, this run has "
                f"{len(self.aux)}; resume with the same --aux datasets"
            )
        self.primary.load_state_dict(state["primary"], world_size)
        for stream, s in zip(self.aux, state["aux"]):
            stream.load_state_dict(s, world_size)
        self._aux_iters = [None] * len(self.aux)
