"""Plain reference training steps, written the way the paper's public reference code works.

They serve twice: as the baseline `bench step` measures the engine against, and as the test
oracle of the engine's objectives (tests/test_methods_vs_reference.py compares loss, gradients,
BatchNorm statistics, omega and routing against them). A change here changes both. They follow the style of the BiaMAT / TRADES / Madry PGD
reference code on purpose:
- eager, fp32, NCHW (the batch is made contiguous; the model is whatever layout it was built in);
- a Python PGD loop: random start, `x + step * sign(grad)`, projection with `torch.min/max`,
  clamp to [0, 1];
- attack gradients with `torch.autograd.grad(loss, [x_adv])` (input only), or, in the naive
  variant, with `loss.backward()` and `x_adv.grad`, which also fills every weight's `.grad`
  for nothing (the caller zeroes them before the real backward, as the trainer does);
- BiaMAT routing with plain ops: softmax, max, a comparison with omega; CE with
  `F.cross_entropy`, soft-CE to uniform as `-log_softmax(z).mean(1)`;
- TRADES recomputes the clean logits at every attack step, as the reference does with
  `criterion_kl(log_softmax(model(x_adv)), softmax(model(x_natural)))`;
- the AT attack runs in train mode (batch statistics) and then puts the BatchNorm running
  statistics back as they were, as the TensorFlow reference whose BatchNorm update ops run only
  with the train op (attack.bn_stats = "step"; with "every_forward" they are left moved).

The objectives are the engine's (engine/methods docstrings, DESIGN.md "The algorithm"), so with
the same weights, batch and RNG state the loss and gradients must agree. Two deliberate
choices, both of which make the reference cheaper or equal, never slower:
- the TRADES start is clamped to [0, 1] (the original clamps only after the first step); it
  only changes the first gradient at saturated pixels and keeps the comparison exact;
- the final TRADES loss reuses one clean train-mode forward for CE and the KL target (the
  original TRADES code runs `model(x_natural)` twice there).

Signature: `(model, batch, state, ctx) -> (loss, StepStats)`, the engine's own, so a test or the
benchmark can call either. Only `ctx.method`, `ctx.attack` and `ctx.in_warmup` are read: the
reference ignores the context's trunk (it calls `model.features`, never a compiled one), its
autocast (fp32 always) and its kernel choice.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.methods.context import MethodState, StepContext, StepStats
from loaders.types import Batch


def _heads(model: nn.Module, x: torch.Tensor, n_pri: int, sizes: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Primary logits of all of x (N, c), and each auxiliary chunk's logits through its own head."""
    feats = model.features(x)  # (N, D)
    aux = [head(f) for head, f in zip(model.aux_fc, feats[n_pri:].split(sizes))] if sizes else []
    return model.fc(feats), aux


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Every BatchNorm running mean, running variance and batch count of the model."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


def _max_softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits, dim=1).max(dim=1)[0]  # (N,)


def reference_route(model: nn.Module, x_pri: torch.Tensor, x_aux: torch.Tensor, state: MethodState,
                    ctx: StepContext) -> tuple[torch.Tensor, bool]:
    """(high (Ba,) bool, routed): the BiaMAT confidence test with plain ops, model in eval mode."""
    m = ctx.method
    n_aux = len(x_aux)
    if m.aux_mode == "labels" or (m.aux_mode == "biamat" and ctx.in_warmup):
        return torch.ones(n_aux, dtype=torch.bool, device=x_aux.device), False
    if m.aux_mode == "uniform":
        return torch.zeros(n_aux, dtype=torch.bool, device=x_aux.device), False
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if state.omega is None or m.threshold == "ema":
            fresh = m.pi * _max_softmax(model(x_pri)).mean().item()
            state.omega = fresh if state.omega is None else m.ema_momentum * state.omega + (1 - m.ema_momentum) * fresh
        high = _max_softmax(model(x_aux)) >= state.omega
    model.train(was_training)
    return high, True


def _routed_batch(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext):
    """(use_aux, per-dataset auxiliary sizes, high, routed, x_nat): the batch made NCHW-contiguous
    as the reference code has it, its auxiliary samples routed, and x_nat = [x_pri; x_aux]
    (B + Ba, 3, H, W), or x_pri alone when the step leaves auxiliary data out."""
    x_pri = batch.x_pri.contiguous()
    if ctx.method.aux_mode == "none" or len(batch.y_aux) == 0:
        return False, [], None, False, x_pri
    x_aux = batch.x_aux.contiguous()
    high, routed = reference_route(model, x_pri, x_aux, state, ctx)
    return True, batch.aux_split(len(model.aux_fc)), high, routed, torch.cat([x_pri, x_aux])


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")  # (N,)


def _soft_ce_uniform(logits: torch.Tensor) -> torch.Tensor:
    return -F.log_softmax(logits, dim=1).mean(dim=1)  # (N,)


def _kl(p_nat: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_nat, reduction="none").sum(dim=1)  # (N,)


def _input_grad(loss: torch.Tensor, x_adv: torch.Tensor, naive: bool) -> torch.Tensor:
    if naive:
        loss.backward()  # the waste this variant measures: weight gradients nobody reads
        return x_adv.grad
    return torch.autograd.grad(loss, [x_adv])[0]


def _pgd_update(x_adv: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, step: float, eps: float) -> torch.Tensor:
    x_adv = x_adv.detach() + step * torch.sign(grad.detach())
    x_adv = torch.min(torch.max(x_adv, x_nat - eps), x_nat + eps)
    return torch.clamp(x_adv, 0.0, 1.0)


def _class_counts(y_aux: torch.Tensor, high: torch.Tensor, sizes: list[int], classes) -> tuple[list, list]:
    seen = [torch.bincount(y, minlength=c) for y, c in zip(y_aux.split(sizes), classes)]
    chosen = [torch.bincount(y, weights=h.float(), minlength=c).long()
              for y, h, c in zip(y_aux.split(sizes), high.split(sizes), classes)]
    return seen, chosen


def _finish(stats: StepStats, loss: torch.Tensor, batch: Batch, high, routed, sizes, model,
            loss_low=None, loss_high=None) -> StepStats:
    if high is not None:
        stats.loss_low, stats.loss_high = loss_low.detach(), loss_high.detach()
        stats.n_aux, stats.n_high, stats.routed = len(batch.y_aux), high.sum(), routed
        if routed:
            stats.seen_per_class, stats.high_per_class = _class_counts(batch.y_aux, high, sizes, model.aux_classes)
    stats.loss = loss.detach()
    return stats


def reference_at_step(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext,
                      naive: bool = False) -> tuple[torch.Tensor, StepStats]:
    """Madry AT (+ routed auxiliary samples): PGD on [x_pri; x_aux] in train mode (running
    statistics restored after it, see the module docstring) maximising the routed per-sample
    sum, then mean primary CE + alpha * (routed aux losses summed) / |B_aux|."""
    m, a = ctx.method, ctx.attack
    y_pri = batch.y_pri
    n_pri = len(y_pri)
    use_aux, sizes, high, routed, x_nat = _routed_batch(model, batch, state, ctx)

    def losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, aux_logits = _heads(model, x, n_pri, sizes)
        ce_pri = _ce(logits[:n_pri], y_pri)  # (B,)
        if not use_aux:
            return ce_pri, None
        ce_high = torch.cat([_ce(la, y) for la, y in zip(aux_logits, batch.y_aux.split(sizes))])  # (Ba,)
        return ce_pri, torch.where(high, ce_high, _soft_ce_uniform(logits[n_pri:]))

    model.train()
    saved = [b.clone() for b in _bn_buffers(model)] if a.bn_stats == "step" else None
    x_adv = torch.clamp(x_nat + torch.zeros_like(x_nat).uniform_(-a.eps, a.eps), 0.0, 1.0)
    for _ in range(a.steps):
        x_adv.requires_grad_(True)
        ce_pri, aux = losses(x_adv)
        objective = ce_pri.sum() + (aux.sum() if aux is not None else 0.0)
        x_adv = _pgd_update(x_adv, _input_grad(objective, x_adv, naive), x_nat, a.step_size, a.eps)
    if saved is not None:  # the attack's forwards leave no trace in the running statistics
        for buffer, value in zip(_bn_buffers(model), saved):
            buffer.copy_(value)

    ce_pri, aux = losses(x_adv)
    loss = ce_pri.mean()
    stats = StepStats(loss=loss.detach(), loss_pri=loss.detach())
    loss_low = loss_high = None
    if use_aux:
        n_aux = len(batch.y_aux)
        loss_high = (aux * high).sum() / n_aux
        loss_low = (aux * ~high).sum() / n_aux
        loss = loss + (0.0 if ctx.in_warmup else m.alpha) * (loss_high + loss_low)
    return loss, _finish(stats, loss, batch, high, routed, sizes, model, loss_low, loss_high)


def reference_trades_step(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext,
                          naive: bool = False) -> tuple[torch.Tensor, StepStats]:
    """TRADES (+ routed auxiliary samples): the KL attack in eval mode from x + 0.001 N(0, 1) with
    the clean logits recomputed at every step, then CE + beta KL per routed target."""
    m, a = ctx.method, ctx.attack
    y_pri = batch.y_pri
    n_pri = len(y_pri)
    ce_on_high = m.high_loss == "ce"
    use_aux, sizes, high, routed, x_nat = _routed_batch(model, batch, state, ctx)
    y_aux_chunks = batch.y_aux.split(sizes) if use_aux else []

    model.eval()
    x_adv = torch.clamp(x_nat + 0.001 * torch.randn(x_nat.shape, device=x_nat.device), 0.0, 1.0)
    for _ in range(a.steps):
        x_adv.requires_grad_(True)
        lp_adv, la_adv = _heads(model, x_adv, n_pri, sizes)
        lp_nat, la_nat = _heads(model, x_nat, n_pri, sizes)  # recomputed every step, as the reference
        kl_pri = _kl(F.softmax(lp_nat, dim=1), lp_adv)  # (B + Ba,)
        objective = kl_pri
        if use_aux:
            if ce_on_high:
                high_obj = torch.cat([_ce(la, y) for la, y in zip(la_adv, y_aux_chunks)])
            else:
                high_obj = torch.cat([_kl(F.softmax(ln, dim=1), la) for ln, la in zip(la_nat, la_adv)])
            objective = torch.cat([kl_pri[:n_pri], torch.where(high, high_obj, kl_pri[n_pri:])])
        x_adv = _pgd_update(x_adv, _input_grad(objective.sum(), x_adv, naive), x_nat, a.step_size, a.eps)

    model.train()
    lp_nat, la_nat = _heads(model, x_nat, n_pri, sizes)
    lp_adv, la_adv = _heads(model, x_adv, n_pri, sizes)
    p_nat = F.softmax(lp_nat, dim=1)  # (B + Ba, c)
    loss = F.cross_entropy(lp_nat[:n_pri], y_pri) + m.beta * _kl(p_nat[:n_pri], lp_adv[:n_pri]).sum() / n_pri
    stats = StepStats(loss=loss.detach(), loss_pri=loss.detach())
    loss_low = loss_high = None
    if use_aux:
        n_aux = len(batch.y_aux)
        ce_nat_high = torch.cat([_ce(la, y) for la, y in zip(la_nat, y_aux_chunks)])  # (Ba,)
        low_term = _soft_ce_uniform(lp_nat[n_pri:]) + m.beta * _kl(p_nat[n_pri:], lp_adv[n_pri:])
        if ce_on_high:
            high_term = torch.cat([_ce(la, y) for la, y in zip(la_adv, y_aux_chunks)])
        else:
            kl_aux = torch.cat([_kl(F.softmax(ln, dim=1), la) for ln, la in zip(la_nat, la_adv)])
            high_term = ce_nat_high + m.beta * kl_aux
        loss_high = (high_term * high).sum() / n_aux
        loss_low = (low_term * ~high).sum() / n_aux
        loss = loss + (0.0 if ctx.in_warmup else m.alpha) * (loss_high + loss_low)
    return loss, _finish(stats, loss, batch, high, routed, sizes, model, loss_low, loss_high)


def naive_at_step(model, batch, state, ctx):
    """The reference AT step whose attack calls `loss.backward()` (weight gradients wasted)."""
    return reference_at_step(model, batch, state, ctx, naive=True)


def naive_trades_step(model, batch, state, ctx):
    """The reference TRADES step whose attack calls `loss.backward()` (weight gradients wasted)."""
    return reference_trades_step(model, batch, state, ctx, naive=True)


REFERENCE_STEPS = {"at": reference_at_step, "trades": reference_trades_step}
NAIVE_STEPS = {"at": naive_at_step, "trades": naive_trades_step}
