"""The optimiser of a run, and its piecewise-constant learning rate with an optional linear
warm-up, as a pure function of the step: the schedule's whole state is the step counter the
checkpoint already holds, plus, for a fine-tune that continues its source's schedule, the
source's epoch that run.json records (`schedule_offset`)."""

from __future__ import annotations

import bisect

import torch
import torch.nn as nn

from engine.config import OptimConfig, TrainConfig


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


def schedule_offset(cfg: TrainConfig, source_epoch: int) -> int:
    """Epochs of the learning-rate schedule run before this run's first step: `source_epoch`,
    the epoch of the source read at start (run.json's init.epoch, engine/run_record.py), for a
    fine-tune with optim.schedule_offset = "global-step" (Appendix E: a source at epoch 65 of a
    [60, 90] schedule fine-tunes at 0.01 for 25 epochs, then at 0.001), else 0."""
    if cfg.optim.schedule_offset == "none":
        return 0
    if source_epoch < 0:
        raise ValueError(f"optim.schedule_offset = \"global-step\" needs the epoch of init.source "
                         f"({cfg.init.source or 'empty'}), which has not been read: the trainer reads it "
                         "when the run starts")
    return source_epoch


def learning_rate(optim: OptimConfig, step: int, steps_per_epoch: int, offset_epochs: int = 0) -> float:
    """LR for 1-based `step`: decayed by gamma at each milestone epoch (as the reference
    code's per-epoch adjust_learning_rate), linearly warmed up over lr_warmup_epochs.
    `offset_epochs` (`schedule_offset`) places the run's step 1 after that many epochs of the
    schedule, counted in this run's steps per epoch."""
    global_step = offset_epochs * steps_per_epoch + step
    epoch_progress = (global_step - 1) / steps_per_epoch  # epochs completed before this step
    warmup = optim.lr_warmup_epochs
    if warmup > 0 and epoch_progress < warmup:
        return optim.lr * (global_step / (warmup * steps_per_epoch))
    epoch = int(epoch_progress)
    decays = bisect.bisect_right(optim.milestone_epochs(offset_epochs + optim.epochs), epoch)
    return optim.lr * optim.gamma ** decays
