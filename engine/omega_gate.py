"""When omega is fixed: after the paper's fixed warm-up, or once the primary head reads something.

The paper fixes omega = pi * mean max-softmax of a clean primary batch on the first step after a
fixed warm-up (5 epochs on CIFAR-10, where the primary head is good by then). On scarce data the
head can still be at chance at that moment, and an omega read off a head at chance separates no
auxiliary class from another. `method.omega_when = "accuracy"` (an engine option beyond the
paper, docs/beyond-the-paper.md) keeps the warm-up going (auxiliary loss weight 0) until an
epoch end where the primary head's clean accuracy on a held-out slice of the primary *training*
data reaches `method.omega_accuracy`, and ends it at `method.omega_latest_epoch` whatever the
accuracy. Omega itself is then computed the paper's way, on the next step (`routing.route`).

The slice is carved out of the primary training set at start (`carve_holdout`, from the seed)
and never trained on; the test set is never read for it. Under torchrun every rank counts its
own whole batches of the slice and the counts are summed, so every rank decides alike. The
decision (`MethodState.warmup_ended`) is saved with the method state, so a resume continues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from engine.config import ConfigError, MethodConfig
from engine.distributed import World
from engine.evaluation import accuracy
from engine.methods.context import MethodState

_HOLDOUT_STREAM = 7919
"""Mixed into the run's seed, so the slice is not the same draw as the per-epoch test subset."""


def carve_holdout(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of n samples, both sorted and disjoint, together all of
    them; `size` held out, drawn from `seed` (the same on every rank and on resume)."""
    if not 0 < size < n:
        raise ConfigError(f"method.omega_holdout = {size}: the primary training data has {n} samples; "
                          f"hold out from 1 to {n - 1} (--set method.omega_holdout=N)")
    order = np.random.default_rng([seed, _HOLDOUT_STREAM]).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])


def heldout_counts(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, world: World,
                   batch_size: int, kernel_impl: str) -> tuple[int, int]:
    """(correct, total) of the primary classifier's clean predictions on the held-out slice,
    summed over the ranks (each counts its own whole batches)."""
    part = world.batch_shard(len(y), batch_size)
    correct, n = accuracy(classifier, x[part], y[part], "clean", batch_size=batch_size, kernel_impl=kernel_impl)
    if world.size > 1:
        correct, n = (int(v) for v in world.sum(torch.tensor([correct, n], device=x.device)).tolist())
    return correct, n


@dataclass(frozen=True)
class OmegaGate:
    """The warm-up rule of a run: `in_warmup` before each epoch, `after_epoch` at each epoch end."""

    method: MethodConfig

    @property
    def waits_for_accuracy(self) -> bool:
        return self.method.omega_when == "accuracy"

    def in_warmup(self, epochs_done: int, state: MethodState) -> bool:
        """Whether the epoch after `epochs_done` completed ones trains with auxiliary weight 0.
        The trainer resolves omega_when to `warmup` and warmup_epochs to 0 outside biamat mode."""
        if not self.waits_for_accuracy:
            return epochs_done < self.method.warmup_epochs
        return state.warmup_ended is None

    def after_epoch(self, epochs_done: int, state: MethodState, measure: Callable[[], tuple[int, int]]) -> dict:
        """At the end of epoch `epochs_done` (1-based): measures the held-out accuracy while the
        warm-up lasts and ends it when the rule says so; returns the fields of the epoch's
        record (none with omega_when = warmup, where nothing is measured)."""
        if not self.waits_for_accuracy:
            return {}
        if state.warmup_ended is not None:
            return {"omega_warmup_ended": state.warmup_ended}
        correct, n = measure()
        acc = correct / max(n, 1)
        m = self.method
        if epochs_done >= m.warmup_epochs and (acc >= m.omega_accuracy or epochs_done >= m.omega_latest_epoch):
            state.warmup_ended = epochs_done
        return {"omega_heldout_acc": acc, "omega_heldout_n": n, "omega_warmup_ended": state.warmup_ended}
