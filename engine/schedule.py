"""Piecewise-constant learning rate with an optional linear warm-up, as a pure function of the
step: the schedule's whole state is the step counter the checkpoint already holds."""

from __future__ import annotations

import bisect

from engine.config import OptimConfig


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
