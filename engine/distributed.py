"""torchrun support: one process per device, PyTorch's DistributedDataParallel for the training
forward/backward, and the few collectives the rest of the engine needs.

Under `torchrun [--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT] --nproc-per-node G
biamat-engine train ...` the environment names each process's rank; `init_from_env` joins the
process group (NCCL on GPUs, gloo on CPUs) and pins the process to its GPU. Then:

- `data_parallel` wraps the loss pass of a training step (`TrainForward`) in
  DistributedDataParallel: gradients are all-reduced bucket by bucket while the backward pass
  runs. The attack and the eval-mode scoring call the plain model, so they communicate nothing.
- `World` is the process group as the engine sees it: rank, size and the collectives that keep
  one omega on every rank, count metrics over all ranks and split evaluation over ranks. A
  one-process run gets `World()` (rank 0 of 1), whose collectives return their input untouched:
  the single-process path pays nothing for any of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from loaders.seeds import derive_seed


def world_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str = "auto") -> bool:
    """Joins the process group when launched by torchrun; returns whether it did."""
    rank, world_size, local_rank = world_from_env()
    if world_size <= 1 or dist.is_initialized():
        return False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return True


def rank_device(device: str) -> str:
    """`cuda` means this process's own GPU when several processes share a machine."""
    if dist.is_initialized() and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return device


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of rank `rank`'s random streams (attack starts, dropout) from epoch `epoch` on:
    `seed` itself on rank 0 at the start, so rank 0 draws what a one-process run draws, and an
    unrelated seed otherwise, so the ranks' random starts are independent rather than one noise
    pattern repeated on every shard."""
    if rank == 0 and epoch == 0:
        return seed
    return derive_seed(seed, rank, epoch)


def batch_shard_sizes(n: int, batch_size: int, world_size: int) -> list[int]:
    """How many of n items each rank takes when they are split into contiguous runs of whole
    batches (the last batch may be short): the ranks' batches are then exactly the batches one
    process would make, so per-batch results (seeded random starts included) do not depend on
    the number of ranks."""
    batches = -(-n // batch_size)
    edges = [min(batches * r // world_size * batch_size, n) for r in range(world_size + 1)]
    return [hi - lo for lo, hi in zip(edges, edges[1:])]


@dataclass(frozen=True)
class World:
    """The process group as the engine sees it: this process's rank, the number of ranks, and the
    collectives the engine uses. `World()` is one process: every collective returns its input."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> "World":
        """The initialised process group, or one process when there is none."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `t` over all ranks, as a new tensor (`t` itself in one process).
        Under NCCL `t` must be on this rank's GPU."""
        if self.size == 1:
            return t
        out = t.clone()
        dist.all_reduce(out)
        return out

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of `t` over all ranks (`t` itself in one process)."""
        if self.size == 1:
            return t
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def any(self, flag: torch.Tensor) -> bool:
        """Whether the bool scalar `flag` is true on any rank: a decision every rank then takes
        alike (one rank stopping alone would leave the others waiting in a collective)."""
        if self.size == 1:
            return bool(flag)
        return bool(self.max(flag.to(torch.int32)))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copies rank 0's buffers (BatchNorm running statistics) to every rank, so every rank
        holds the model rank 0 checkpoints and evaluates it alike."""
        if self.size == 1:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (`[obj]` in one process)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def batch_shard(self, n: int, batch_size: int) -> slice:
        """This rank's contiguous part of n items, in whole batches (see `batch_shard_sizes`)."""
        sizes = batch_shard_sizes(n, batch_size, self.size)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def gather_rows(self, local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """The ranks' row blocks concatenated in rank order; `sizes` (every rank's row count, as
        `batch_shard_sizes` gives them) is known to all, so no sizes are exchanged. Bool tensors
        travel as uint8 (not every backend reduces bool)."""
        if self.size == 1:
            return local
        dtype = local.dtype
        wire = local.to(torch.uint8) if dtype == torch.bool else local
        longest = max(sizes)
        padded = wire.new_zeros((longest, *wire.shape[1:]))
        padded[: len(wire)] = wire
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        out = torch.cat([p[:k] for p, k in zip(parts, sizes)])
        return out.to(dtype)


class TrainForward(nn.Module):
    """The loss pass of a training step as one module call, for DistributedDataParallel to wrap.

    `forward(xs, aux_sizes)` returns `model.heads(trunk(x), aux_sizes)` for each batch x of xs,
    each through its own trunk call, so BatchNorm sees them apart (TRADES's clean and
    adversarial batches). DDP wraps this module rather than the model because the objectives
    run the model through its (possibly compiled) trunk and heads, never `model.forward`, and
    because only the loss pass may carry DDP's hooks: the attack's forward/backward passes and
    the eval-mode scoring call the plain model. One call per step keeps DDP's graph static.
    """

    def __init__(self, model: nn.Module, trunk: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.trunk = trunk  # a function (model.features, maybe compiled), not a submodule

    def forward(self, xs: Sequence[torch.Tensor], aux_sizes: Sequence[int] = ()
                ) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        from engine.models.aux_bn import aux_rows  # model.aux_bn = separate: the auxiliary rows' BatchNorms

        out = []
        for x in xs:
            with aux_rows(self.model, sum(aux_sizes)):
                feats = self.trunk(x)
            out.append(self.model.heads(feats, aux_sizes))
        return out


def data_parallel(model: nn.Module, trunk: Callable[[torch.Tensor], torch.Tensor],
                  device: torch.device) -> nn.Module:
    """DistributedDataParallel around `TrainForward(model, trunk)`; the process group must be up.

    - gradient_as_bucket_view: gradients live in the all-reduce buckets (no copy, less memory).
    - static_graph: every step's loss pass uses the same parameters (auxiliary heads are in the
      graph even with loss weight 0 in warm-up, and a run without auxiliary data has none), so
      DDP skips the unused-parameter search and may reorder buckets after the first step.
    - broadcast_buffers (DDP's default): each loss pass starts from rank 0's BatchNorm running
      statistics, so the ranks' eval-mode passes (TRADES attack, routing scores) drift apart by
      at most one step's update.
    The constructor broadcasts rank 0's parameters and buffers, so every rank starts equal.
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(TrainForward(model, trunk), device_ids=device_ids,
                                   gradient_as_bucket_view=True, static_graph=True)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """The model with every BatchNorm as SyncBatchNorm: batch statistics over the global batch,
    as one process would compute them on it, at the price of an all-reduce per BatchNorm layer
    in every train-mode forward (the AT attack's included) and backward. Parameters and buffers
    are the same tensors, so an optimiser built before stays valid. PyTorch runs SyncBatchNorm
    on GPUs only."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
