"""One training step, as every run and every benchmark takes it.

    objective (attack + routed loss) -> zero_grad -> (scaled) backward -> gradient average
    across processes -> optimiser step

The trainer calls `TrainStep` once per batch and `bench step` times the very same object, so
"the engine's step" in a benchmark is by construction the step that trains. The trunk the
objectives run through is compiled by `compile_trunk` in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from engine.distributed import average_gradients
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
    return torch.compile(model.features)


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
    world_size: int = 1

    def __call__(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
        self.model.train()
        loss, stats = self.objective(self.model, batch, self.state, ctx)
        self.optimizer.zero_grad(set_to_none=True)  # also drops what a naive attack accumulated
        self.scaler.scale(loss).backward()
        if self.world_size > 1:
            average_gradients(self.model.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, stats
