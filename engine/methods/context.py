"""What a training objective needs besides the model and the batch, and what it reports."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn as nn

from engine.config import AttackConfig, MethodConfig
from engine.distributed import World
from engine.models.aux_bn import aux_rows


class MethodState:
    """The method's state across steps; saved in every checkpoint.

    omega lives on the training device as a 0-dim float64 tensor, so the step that routes by it,
    or moves it (threshold `ema`), never waits for the device. `omega` reads it back as a number
    (the checkpoint, metrics.jsonl, benchmarks: places that wait anyway); the step uses
    `threshold` / `set_threshold`."""

    def __init__(self, omega: float | None = None, warmup_ended: int | None = None) -> None:
        self.omega = omega
        self.warmup_ended = warmup_ended
        """method.omega_when = accuracy: the epoch at whose end the held-out check ended the warm-up
        (`engine.omega_gate`); None while it lasts, and always with omega_when = warmup."""

    @property
    def omega(self) -> float | None:
        """Confidence threshold; None until the first step after warm-up. Reading it syncs."""
        return None if self._omega is None else float(self._omega)

    @omega.setter
    def omega(self, value: float | torch.Tensor | None) -> None:
        self._omega = None if value is None else torch.as_tensor(value, dtype=torch.float64).detach().reshape(())

    def threshold(self, device: torch.device) -> torch.Tensor | None:
        """omega as a 0-dim float64 tensor on `device` (None before it is set). A value set from
        a number (a resumed checkpoint) crosses to the device once and stays there."""
        if self._omega is not None and self._omega.device != device:
            self._omega = self._omega.to(device)
        return self._omega

    def set_threshold(self, omega: torch.Tensor) -> None:
        """Sets omega from a 0-dim device tensor without reading it back."""
        self._omega = omega.detach().to(torch.float64).reshape(())

    def state_dict(self) -> dict:
        return {"omega": self.omega, "warmup_ended": self.warmup_ended}

    def load_state_dict(self, state: dict) -> None:
        self.omega = state["omega"]
        self.warmup_ended = state.get("warmup_ended")  # checkpoints from before the option lack it

    def __repr__(self) -> str:
        return f"MethodState(omega={self.omega!r}, warmup_ended={self.warmup_ended!r})"


@dataclass
class StepContext:
    """Per-step settings the trainer hands to an objective."""

    method: MethodConfig
    attack: AttackConfig
    in_warmup: bool
    """True during the selection's warm-up: auxiliary losses are weighted 0. The trainer's
    `engine.omega_gate.OmegaGate` decides it (epochs < warmup_epochs, or, with omega_when =
    accuracy, until the held-out check ends it); outside biamat and oracle mode warmup_epochs
    resolves to 0 (`engine.config.resolve_warmup`), so only the selection's warm-up sets it."""
    trunk: Callable[[torch.Tensor], torch.Tensor]
    """The model's feature extractor, possibly torch.compile'd: (N, 3, H, W) -> (N, D)."""
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    kernel_impl: str = "auto"
    world: World = World()
    """The ranks that train together (set by `engine.step.TrainStep`): routing sums the mean
    confidence over them, so every rank holds one omega. One process by default."""
    aux_related: Sequence[torch.Tensor] = ()
    """aux_mode oracle: per auxiliary dataset, (classes,) bool on the device, True where its data
    records the class as related to the primary classes (the shapes generator's groups)."""
    train_forward: Callable | None = None
    """Under torchrun, DistributedDataParallel around the loss pass (`engine.distributed.
    TrainForward`, set by `engine.step.TrainStep`); None in one process."""

    def logits(self, model: nn.Module, x: torch.Tensor,
               aux_sizes: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`model.heads` over the trunk: primary logits of every row and the auxiliary heads'
        logits of the trailing auxiliary chunks. The caller sets autocast and grad mode.
        For the attack and the scoring passes: it never communicates across ranks. With
        model.aux_bn = separate the auxiliary rows go through the auxiliary BatchNorms."""
        with aux_rows(model, sum(aux_sizes)):
            feats = self.trunk(x)  # (N, D)
        return model.heads(feats, aux_sizes)

    def train_logits(self, model: nn.Module, xs: Sequence[torch.Tensor],
                     aux_sizes: Sequence[int] = ()) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """The loss pass: `logits` of each batch in xs (each through its own trunk call), in one
        call. Under torchrun it runs through DistributedDataParallel, so the backward of the loss
        built from it averages the gradients across ranks; every objective's loss must come
        from exactly one call of this."""
        if self.train_forward is None:
            return [self.logits(model, x, aux_sizes) for x in xs]
        return self.train_forward(xs, aux_sizes)


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
