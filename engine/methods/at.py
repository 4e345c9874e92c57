"""Madry adversarial training (AT) with routed auxiliary samples (AT+BiaMAT and variants).

One PGD run attacks the combined batch [x_pri; x_aux] with BatchNorm on batch statistics
(running statistics untouched unless attack.bn_stats = "every_forward"), maximising the routed sum:
CE(f_pri, y) on primary samples, soft-CE(f_pri, uniform) on low, CE(f_aux, y_aux) on high.
Loss = mean primary CE + alpha * (sum of routed auxiliary losses) / |B_aux| on the adversarial
batch (`engine.methods.routed_ce`, shared with standard training).
In aux_mode `pseudo` the pseudo-labelled auxiliary samples join the primary ones: plain AT on
[x_pri; x_aux] with labels [y_pri; y_aux] (mean CE over both).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.attacks import bn_mode, input_gradients_only, pgd_linf
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.routed_ce import routed_ce
from loaders.types import Batch


def at_step(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
    objective = routed_ce(model, batch, state, ctx)

    def attack_objective(x: torch.Tensor) -> torch.Tensor:
        with ctx.autocast():
            logits = ctx.logits(model, x, objective.sizes)
        return torch.cat(objective.per_sample(*logits, ctx.kernel_impl))

    # As the reference: the attack sees batch statistics; the running statistics move once,
    # with the training forward below (attack.bn_stats = "every_forward": at every forward).
    attack_bn = "batch" if ctx.attack.bn_stats == "step" else "train"
    with bn_mode(model, attack_bn), input_gradients_only(model):
        x_adv = pgd_linf(attack_objective, objective.x_nat, eps=ctx.attack.eps, step_size=ctx.attack.step_size,
                         steps=ctx.attack.steps, random_start=True, kernel_impl=ctx.kernel_impl)
    model.train()
    with ctx.autocast():
        (logits,) = ctx.train_logits(model, [x_adv], objective.sizes)  # the loss pass (through DDP under torchrun)
    return objective.loss(model, logits, ctx)
