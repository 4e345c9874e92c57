"""torchrun support: one process per device, gradients averaged across processes.

Under `torchrun --nproc-per-node N biamat-engine train ...` the environment names each
process's rank; `init_from_env` joins the process group (NCCL on GPUs, gloo on CPUs) and pins
the process to its GPU. Loaders shard by rank, only rank 0 writes files, and the trainer
averages gradients after each backward pass.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def average_gradients(parameters) -> None:
    """Averages every gradient across processes (what DistributedDataParallel does, without its
    bucketing: simple, and a step's cost is dominated by the attack's forward/backward passes)."""
    world_size = dist.get_world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size
