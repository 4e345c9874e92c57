"""What a training objective needs besides the model and the batch, and what it reports."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn as nn

from engine.config import AttackConfig, MethodConfig


@dataclass
class MethodState:
    """The method's state across steps; saved in every checkpoint."""

    omega: float | None = None
    """Confidence threshold; None until the first step after warm-up."""

    def state_dict(self) -> dict:
        return {"omega": self.omega}

    def load_state_dict(self, state: dict) -> None:
        self.omega = state["omega"]


@dataclass
class StepContext:
    """Per-step settings the trainer hands to an objective."""

    method: MethodConfig
    attack: AttackConfig
    in_warmup: bool
    """True while epochs < warmup_epochs: auxiliary losses are weighted 0. The trainer resolves
    warmup_epochs to 0 outside biamat mode (`engine.config.resolve_warmup`), so only the
    selection's warm-up ever sets it."""
    trunk: Callable[[torch.Tensor], torch.Tensor]
    """The model's feature extractor, possibly torch.compile'd: (N, 3, H, W) -> (N, D)."""
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    kernel_impl: str = "auto"

    def logits(self, model: nn.Module, x: torch.Tensor,
               aux_sizes: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`model.heads` over the trunk: primary logits of every row and the auxiliary heads'
        logits of the trailing auxiliary chunks. The caller sets autocast and grad mode."""
        return model.heads(self.trunk(x), aux_sizes)


@dataclass
class StepStats:
    """Statistics of one step, as detached device tensors so a step never waits for the device;
    the trainer sums them over an epoch and reads them once."""

    loss: torch.Tensor
    loss_pri: torch.Tensor
    loss_low: torch.Tensor | float = 0.0
    loss_high: torch.Tensor | float = 0.0
    n_aux: int = 0
    n_high: torch.Tensor | int = 0
    routed: bool = False
    """Whether the confidence test ran this step (biamat mode after warm-up)."""
    seen_per_class: list[torch.Tensor] = field(default_factory=list)
    """Per auxiliary dataset: (classes,) int64 counts of samples seen this step."""
    high_per_class: list[torch.Tensor] = field(default_factory=list)
    """Per auxiliary dataset: (classes,) int64 counts of high-confidence samples."""
