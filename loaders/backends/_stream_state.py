"""What the loader backends' streams share: checking batch size and sharding, counting an
epoch's batches per rank, and the (epoch, position) state a resume restores.

Every backend shards alike (the resident backend's rule, torch's DistributedSampler's): each rank
visits the same number of samples, the remainder dropped with `drop_last` and otherwise padded
with the order's first samples, so error messages and batch counts agree across backends.
"""

from __future__ import annotations


def check_sharding(name: str, batch_size: int, rank: int, world_size: int) -> None:
    """ValueError naming the dataset `name` unless batch_size >= 1 and 0 <= rank < world_size."""
    if batch_size < 1:
        raise ValueError(f"{name}: batch_size must be at least 1, got {batch_size}")
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
    ValueError naming `name` when that is none."""
    per_rank = samples_per_rank(num_samples, world_size, drop_last)
    count = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
    if count == 0:
        raise ValueError(
            f"{name}: {num_samples} samples over {world_size} rank(s) make no batch of "
            f"{batch_size}{' with drop_last' if drop_last else ''}; use a smaller batch size"
        )
    return count


class EpochPosition:
    """Mixin: `state_dict` / `load_state_dict` of a stream's place, {"epoch", "position"}.

    The stream keeps `_epoch`, `_position` (the next batch of that epoch), `_num_batches` (per
    epoch) and `_name` (the dataset or file, for messages)."""

    _epoch: int
    _position: int
    _num_batches: int
    _name: str

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self._num_batches:
            raise ValueError(
                f"{self._name}: cannot resume at epoch {epoch}, saved position {position}: this stream "
                f"has {self._num_batches} batches per epoch; was the checkpoint written with another "
                f"dataset, batch size or world size?"
            )
        self._epoch, self._position = epoch, position
