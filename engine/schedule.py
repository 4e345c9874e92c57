"""The optimiser of a run, and its piecewise-constant learning rate with an optional linear
warm-up, as a pure function of the step: the schedule's whole state is the step counter the
checkpoint already holds."""

from __future__ import annotations

import bisect

import torch
import torch.nn as nn

from engine.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float, scope: str) -> list[dict]:
    """SGD parameter groups: one decayed group for `all`; for `weights`, the convolution and
    linear weights decayed and every other parameter (BatchNorm scale and shift, biases) not,
    as the reference AT code decays the variables named `kernel` only."""
    params = list(model.parameters())
    if scope == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    if scope != "weights":
        raise ValueError(f"weight decay scope must be 'all' or 'weights', got {scope!r}")
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return [{"params": [p for p in params if id(p) in kernels], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in kernels], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum as `optim` says, weight decay on the parameters `weight_decay_on` names."""
    return torch.optim.SGD(parameter_groups(model, optim.weight_decay, optim.weight_decay_on), lr=optim.lr,
                           momentum=optim.momentum, nesterov=optim.nesterov)


def learning_rate(optim: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """LR for 1-based `step`: decayed by gamma at each milestone epoch (as the reference
    code's per-epoch adjust_learning_rate), linearly warmed up over lr_warmup_epochs."""
    epoch_progress = (step - 1) / steps_per_epoch  # epochs completed before this step
    warmup = optim.lr_warmup_epochs
    if warmup > 0 and epoch_progress < warmup:
        return optim.lr * (step / (warmup * steps_per_epoch))
    epoch = int(epoch_progress)
    decays = bisect.bisect_right(optim.milestone_epochs(), epoch)
    return optim.lr * optim.gamma ** decays
