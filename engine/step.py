"""One training step, as every run and every benchmark takes it.

    objective (attack + routed loss) -> zero_grad -> (scaled) backward, which under torchrun
    all-reduces the gradients bucket by bucket as it goes (DistributedDataParallel) -> optimiser step

The trainer calls `TrainStep` once per batch and `bench step` / `bench ddp` time the very same
object, so "the engine's step" in a benchmark is by construction the step that trains. The trunk
the objectives run through is compiled by `compile_trunk` in all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from engine.distributed import World
from engine.methods import MethodState, StepContext, StepStats
from engine.runtime import Runtime
from loaders.types import Batch

Objective = Callable[[nn.Module, Batch, MethodState, StepContext], tuple[torch.Tensor, StepStats]]
"""A training objective (`engine.methods.METHODS[name]`, or a benchmark's reference)."""

# One run calls the compiled trunk in several guarded variants (train or eval BatchNorm, weights
# frozen for the attack or not, grad on or off, a few batch sizes): more than Dynamo's default
# of 8 recompiles, past which it would silently fall back to eager.
RECOMPILE_LIMIT = 32


def compile_trunk(model: nn.Module, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's feature extractor, under torch.compile when the runtime says so."""
    if not runtime.compile:
        return model.features
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
    return torch.compile(model.features, mode=runtime.compile_mode, dynamic=runtime.compile_dynamic)


@dataclass
class TrainStep:
    """Trains `model` on one batch with `objective`; returns the (undetached) loss and the
    objective's statistics. `state` (omega) persists across steps and goes into checkpoints."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    """Disabled (scale 1, plain optimizer.step) except for fp16 autocast."""
    state: MethodState
    train_forward: nn.Module | None = None
    """Under torchrun: `engine.distributed.data_parallel(model, trunk, device)`, the
    DistributedDataParallel loss pass handed to the objective as `ctx.train_forward`; its backward
    averages the gradients across ranks. None in one process: no wrapper, no communication."""
    world: World = World()
    """The ranks this step trains with, handed to the objective as `ctx.world` (one omega)."""

    def __post_init__(self) -> None:
        if (self.world.size > 1) != (self.train_forward is not None):
            raise ValueError(
                f"TrainStep: {self.world.size} rank(s) but train_forward is "
                f"{'set' if self.train_forward is not None else 'None'}: several ranks need the "
                "DistributedDataParallel loss pass (engine.distributed.data_parallel), one process none"
            )
        wrapped = getattr(getattr(self.train_forward, "module", None), "model", self.model)
        if wrapped is not self.model:
            raise ValueError("TrainStep: train_forward wraps another model than the one this step trains")

    def __call__(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
        self.model.train()
        if self.train_forward is None:
            loss, stats = self.objective(self.model, batch, self.state, ctx)
        else:
            loss, stats = self._distributed_objective(batch, ctx)
        self.optimizer.zero_grad(set_to_none=True)  # also drops what a naive attack accumulated
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, stats

    def _distributed_objective(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
        """The objective with the DDP loss pass and the world in its context, checked to call the
        loss pass exactly once: a loss computed around DDP would never be averaged, and the
        replicas would silently drift apart."""
        calls = 0

        def loss_pass(xs, aux_sizes=()):
            nonlocal calls
            calls += 1
            return self.train_forward(xs, aux_sizes)

        ctx = dataclasses.replace(ctx, train_forward=loss_pass, world=self.world)
        loss, stats = self.objective(self.model, batch, self.state, ctx)
        if calls != 1:
            name = getattr(self.objective, "__name__", repr(self.objective))
            raise RuntimeError(
                f"objective {name} ran the loss pass {calls} times under torchrun: an objective must "
                "build its loss from exactly one ctx.train_logits(...) call, which runs through "
                "DistributedDataParallel"
            )
        return loss, stats
