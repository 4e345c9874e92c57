"""The routed cross-entropy objective that AT and standard training share.

Both train on one batch [x_pri; x_aux] (adversarial for AT, clean for standard) with the same
per-sample losses: CE(f_pri, y) on primary samples, and on auxiliary samples the routed loss
(CE(f_aux, y_aux) where high, soft-CE(f_pri, uniform) where low). The loss is
mean primary CE + alpha * (sum of routed auxiliary losses) / |B_aux|, with weight 0 during the
selection's warm-up. The two methods differ only in which inputs the loss pass sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.attacks import bn_mode
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.routing import aux_stats, combined_inputs, pseudo_labelled_as_primary, route, routed_aux_losses
from loaders.types import Batch


@dataclass
class RoutedCE:
    """One batch's routed CE objective: what to split the logits by, and each auxiliary sample's route."""

    batch: Batch
    x_nat: torch.Tensor
    """(B + Ba, 3, H, W) clean [x_pri; x_aux], or x_pri alone without auxiliary data."""
    sizes: list[int]
    """Per auxiliary dataset, its rows of x_aux (empty without auxiliary data)."""
    use_aux: bool
    high: torch.Tensor | None
    """(Ba,) bool: True where a sample trains with its own label through f_aux."""
    routed: bool
    """Whether the confidence test ran this step."""

    def per_sample(self, logits_pri: torch.Tensor, logits_aux: list[torch.Tensor],
                   kernel_impl: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(primary CE (B,), routed aux losses (Ba,)) from the logits of [x_pri; x_aux]:
        (B + Ba, c) primary logits and [(Ba_i, c_i)] auxiliary ones."""
        n_pri = len(self.batch.y_pri)
        ce_pri = F.cross_entropy(logits_pri[:n_pri].float(), self.batch.y_pri, reduction="none")
        if not self.use_aux:
            return ce_pri, ce_pri.new_zeros(0)
        return ce_pri, routed_aux_losses(logits_pri[n_pri:], logits_aux, self.batch.y_aux, self.high,
                                         self.sizes, kernel_impl)

    def loss(self, model: nn.Module, logits: tuple[torch.Tensor, list[torch.Tensor]],
             ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
        """The step's loss and statistics from the loss pass's logits."""
        ce_pri, aux_losses = self.per_sample(*logits, ctx.kernel_impl)
        loss_pri = ce_pri.mean()
        loss = loss_pri
        stats = StepStats(loss=loss_pri.detach(), loss_pri=loss_pri.detach())
        if self.use_aux:
            n_aux = len(self.batch.y_aux)
            weight = 0.0 if ctx.in_warmup else ctx.method.alpha
            loss_high = (aux_losses * self.high).sum() / n_aux  # l_high of Algorithm 1
            loss_low = (aux_losses * ~self.high).sum() / n_aux  # l_low of Algorithm 1
            loss = loss_pri + weight * (loss_high + loss_low)
            aux_stats(stats, self.high, self.routed, self.batch, self.sizes, model, loss_high, loss_low)
        stats.loss = loss.detach()
        return loss, stats


def routed_ce(model: nn.Module, batch: Batch, state: MethodState, ctx: StepContext) -> RoutedCE:
    """The batch's routed CE objective under the configured aux mode; in biamat mode after
    warm-up the clean primary and auxiliary batches are scored in eval mode first; in pseudo mode
    the pseudo-labelled auxiliary samples are primary samples."""
    batch = pseudo_labelled_as_primary(batch, ctx.method.aux_mode)
    use_aux, sizes, x_nat = combined_inputs(model, batch, ctx.method.aux_mode)
    high, routed = None, False
    if use_aux:
        def clean_logits(x: torch.Tensor, aux_sizes: list[int]) -> torch.Tensor:
            with torch.no_grad(), bn_mode(model, "eval"), ctx.autocast():
                return ctx.logits(model, x, aux_sizes)[0]

        # The auxiliary batch is scored as the loss pass normalises it (its own BatchNorms with
        # model.aux_bn = separate; the shared ones otherwise), as TRADES scores its clean pass.
        high, routed = route(state, ctx, lambda: clean_logits(batch.x_pri, []),
                             lambda: clean_logits(batch.x_aux, sizes), len(batch.y_aux), batch.y_aux.device,
                             batch.y_aux, sizes)
    return RoutedCE(batch, x_nat, sizes, use_aux, high, routed)
