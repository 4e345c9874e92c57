"""TRADES with routed auxiliary samples (TRADES+BiaMAT and variants).

The attack runs in eval mode from x + 0.001 N(0, 1) and maximises KL(clean || adv): through
f_pri for primary and low samples, through f_aux for high ones. The clean predictions it
diverges from are computed once per batch, not at every attack step as the reference code
does. The loss, per sample: primary CE(x) + beta KL; low soft-CE(uniform) + beta KL; high
CE(y_aux) + beta KL, or plain adversarial CE with `high_loss = "ce"` (the paper's choice with
a CIFAR-100 primary, Appendix E). In aux_mode `pseudo` the pseudo-labelled auxiliary samples
join the primary ones: plain TRADES (CE + beta KL, means over both) on [x_pri; x_aux] with
labels [y_pri; y_aux], as Carmon et al.'s RST.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.attacks import bn_mode, input_gradients_only, kl_to, pgd_linf, trades_start
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.routing import (aux_stats, combined_inputs, pseudo_labelled_as_primary, route,
                                    routed_aux_losses)
from loaders.types import Batch


def _per_head_kl(p_nat: list[torch.Tensor], logits_adv: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([kl_to(p, la) for p, la in zip(p_nat, logits_adv)])  # (Ba,)


def _per_head_ce(logits: list[torch.Tensor], y_aux: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return torch.cat([F.cross_entropy(la.float(), y, reduction="none") for la, y in zip(logits, y_aux.split(sizes))])


def trades_step(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
    m = ctx.method
    batch = pseudo_labelled_as_primary(batch, m.aux_mode)  # pseudo mode: one primary batch
    use_aux, sizes, x_nat = combined_inputs(model, batch, m.aux_mode)  # x_nat: (B + Ba, 3, H, W)
    n_pri = len(batch.y_pri)
    ce_on_high = m.high_loss == "ce"

    # Clean predictions in eval mode, once per batch: the attack's KL targets and the routing scores.
    with torch.no_grad(), bn_mode(model, "eval"), ctx.autocast():
        lp_clean, la_clean = ctx.logits(model, x_nat, sizes)
    p_pri_clean = F.softmax(lp_clean.float(), dim=1)  # (B + Ba, c)
    p_aux_clean = [F.softmax(la.float(), dim=1) for la in la_clean]

    high, routed = None, False
    if use_aux:
        high, routed = route(state, ctx, lambda: lp_clean[:n_pri], lambda: lp_clean[n_pri:],
                             len(batch.y_aux), batch.y_aux.device, batch.y_aux, sizes)

    def attack_objective(x: torch.Tensor) -> torch.Tensor:
        with ctx.autocast():
            lp, la = ctx.logits(model, x, sizes)
        kl_pri = kl_to(p_pri_clean, lp)  # (B + Ba,)
        if not use_aux:
            return kl_pri
        high_obj = _per_head_ce(la, batch.y_aux, sizes) if ce_on_high else _per_head_kl(p_aux_clean, la)
        return torch.cat([kl_pri[:n_pri], torch.where(high, high_obj, kl_pri[n_pri:])])

    with bn_mode(model, "eval"), input_gradients_only(model):
        x_adv = pgd_linf(attack_objective, x_nat, eps=ctx.attack.eps, step_size=ctx.attack.step_size,
                         steps=ctx.attack.steps, start=trades_start(x_nat), kernel_impl=ctx.kernel_impl)

    model.train()
    # Two trunk passes, as the reference: BatchNorm sees clean and adversarial batches apart;
    # both in one loss-pass call (through DDP under torchrun).
    with ctx.autocast():
        (lp_nat, la_nat), (lp_adv, la_adv) = ctx.train_logits(model, [x_nat, x_adv], sizes)
    p_pri_nat = F.softmax(lp_nat.float(), dim=1)
    loss_pri = F.cross_entropy(lp_nat[:n_pri].float(), batch.y_pri) + m.beta * kl_to(p_pri_nat[:n_pri], lp_adv[:n_pri]).mean()
    loss = loss_pri
    stats = StepStats(loss=loss_pri.detach(), loss_pri=loss_pri.detach())
    if use_aux:
        n_aux = len(batch.y_aux)
        natural = routed_aux_losses(lp_nat[n_pri:], la_nat, batch.y_aux, high, sizes, ctx.kernel_impl)
        low_term = natural + m.beta * kl_to(p_pri_nat[n_pri:], lp_adv[n_pri:])
        if ce_on_high:
            high_term = _per_head_ce(la_adv, batch.y_aux, sizes)
        else:
            p_aux_nat = [F.softmax(la.float(), dim=1) for la in la_nat]
            high_term = natural + m.beta * _per_head_kl(p_aux_nat, la_adv)
        loss_high = (high_term * high).sum() / n_aux
        loss_low = (low_term * ~high).sum() / n_aux
        weight = 0.0 if ctx.in_warmup else m.alpha
        loss = loss_pri + weight * (loss_high + loss_low)
        aux_stats(stats, high, routed, batch, sizes, model, loss_high, loss_low)
    stats.loss = loss.detach()
    return loss, stats
