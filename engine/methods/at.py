"""Madry adversarial training (AT) with routed auxiliary samples (AT+BiaMAT and variants).

One PGD run attacks the combined batch [x_pri; x_aux] with BatchNorm on batch statistics
(running statistics untouched unless attack.bn_stats = "every_forward"), maximising the routed sum:
CE(f_pri, y) on primary samples, soft-CE(f_pri, uniform) on low, CE(f_aux, y_aux) on high.
Loss = mean primary CE + alpha * (sum of routed auxiliary losses) / |B_aux|.
In aux_mode `pseudo` the pseudo-labelled auxiliary samples join the primary ones: plain AT on
[x_pri; x_aux] with labels [y_pri; y_aux] (mean CE over both).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.attacks import bn_mode, input_gradients_only, pgd_linf
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.routing import (aux_stats, combined_inputs, pseudo_labelled_as_primary, route,
                                    routed_aux_losses)
from loaders.types import Batch


def at_step(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
    m = ctx.method
    batch = pseudo_labelled_as_primary(batch, m.aux_mode)  # pseudo mode: one primary batch
    use_aux, sizes, x_nat = combined_inputs(model, batch, m.aux_mode)  # x_nat: (B + Ba, 3, H, W)
    n_pri = len(batch.y_pri)

    high = None
    routed = False
    if use_aux:
        def clean_logits(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), bn_mode(model, "eval"), ctx.autocast():
                return ctx.logits(model, x)[0]

        high, routed = route(state, ctx, lambda: clean_logits(batch.x_pri), lambda: clean_logits(batch.x_aux),
                             len(batch.y_aux), batch.y_aux.device)

    def per_sample_losses(logits_pri: torch.Tensor, logits_aux: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(primary CE (B,), routed aux losses (Ba,)) from the logits of x = [x_pri; x_aux]:
        (B + Ba, c) primary logits and [(Ba_i, c_i)] auxiliary ones."""
        ce_pri = F.cross_entropy(logits_pri[:n_pri].float(), batch.y_pri, reduction="none")
        if not use_aux:
            return ce_pri, ce_pri.new_zeros(0)
        return ce_pri, routed_aux_losses(logits_pri[n_pri:], logits_aux, batch.y_aux, high, sizes, ctx.kernel_impl)

    def attack_objective(x: torch.Tensor) -> torch.Tensor:
        with ctx.autocast():
            logits = ctx.logits(model, x, sizes)
        return torch.cat(per_sample_losses(*logits))

    # As the reference: the attack sees batch statistics; the running statistics move once,
    # with the training forward below (attack.bn_stats = "every_forward": at every forward).
    attack_bn = "batch" if ctx.attack.bn_stats == "step" else "train"
    with bn_mode(model, attack_bn), input_gradients_only(model):
        x_adv = pgd_linf(attack_objective, x_nat, eps=ctx.attack.eps, step_size=ctx.attack.step_size,
                         steps=ctx.attack.steps, random_start=True, kernel_impl=ctx.kernel_impl)
    model.train()
    with ctx.autocast():
        (logits,) = ctx.train_logits(model, [x_adv], sizes)  # the loss pass (through DDP under torchrun)
    ce_pri, aux_losses = per_sample_losses(*logits)
    loss_pri = ce_pri.mean()
    loss = loss_pri
    stats = StepStats(loss=loss_pri.detach(), loss_pri=loss_pri.detach())
    if use_aux:
        n_aux = len(batch.y_aux)
        weight = 0.0 if ctx.in_warmup else m.alpha
        loss_high = (aux_losses * high).sum() / n_aux  # l_high of Algorithm 1
        loss_low = (aux_losses * ~high).sum() / n_aux  # l_low of Algorithm 1
        loss = loss_pri + weight * (loss_high + loss_low)
        aux_stats(stats, high, routed, batch, sizes, model, loss_high, loss_low)
    stats.loss = loss.detach()
    return loss, stats
