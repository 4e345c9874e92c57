"""The BiaMAT selection: threshold omega, per-sample routing, and routed auxiliary losses.

Routing decides, per auxiliary sample, which target it trains with: high -> its own label
through its dataset's head f_aux; low -> the uniform distribution over the primary classes
through f_pri (y_ER). The kernels do the per-sample work; this module holds the policy.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.distributed import World
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.oracle import oracle_high
from kernels.route import confidence_mask, routed_loss
from loaders.types import Batch


def pseudo_labelled_as_primary(batch: Batch, aux_mode: str) -> Batch:
    """In mode `pseudo` (Carmon et al.'s RST, the paper's Table 3 / Table 7) the auxiliary
    samples carry primary-class pseudo-labels and train exactly as primary samples: the batch
    becomes one primary batch [x_pri; x_aux] (B + Ba, 3, H, W) with labels [y_pri; y_aux] and no
    auxiliary part, so no head f_aux, no routing and no alpha touch them. Other modes: `batch`."""
    if aux_mode != "pseudo" or len(batch.y_aux) == 0:
        return batch
    return Batch(x_pri=torch.cat([batch.x_pri, batch.x_aux]), y_pri=torch.cat([batch.y_pri, batch.y_aux]),
                 x_aux=batch.x_aux[:0], y_aux=batch.y_aux[:0], aux_source=batch.aux_source[:0])


def combined_inputs(model: nn.Module, batch: Batch, aux_mode: str) -> tuple[bool, list[int], torch.Tensor]:
    """(use_aux, per-dataset auxiliary sizes, x_nat = [x_pri; x_aux] (B + Ba, 3, H, W)): the one
    batch both objectives attack and train on; auxiliary data is left out in mode `none`, and
    arrives already folded into the primary part in mode `pseudo` (`pseudo_labelled_as_primary`)."""
    use_aux = aux_mode != "none" and len(batch.y_aux) > 0
    if not use_aux:
        return False, [], batch.x_pri
    return True, batch.aux_split(len(model.aux_fc)), torch.cat([batch.x_pri, batch.x_aux])


def routed_aux_losses(
    logits_pri_aux: torch.Tensor,
    logits_aux: list[torch.Tensor],
    y_aux: torch.Tensor,
    high: torch.Tensor,
    sizes: list[int],
    kernel_impl: str,
) -> torch.Tensor:
    """(Ba,) float32: CE through f_aux where high, soft-CE to uniform through f_pri where low."""
    parts = [
        routed_loss(lp, la, y, h, impl=kernel_impl)
        for lp, la, y, h in zip(logits_pri_aux.split(sizes), logits_aux, y_aux.split(sizes), high.split(sizes))
        if len(y)
    ]
    return torch.cat(parts) if parts else logits_pri_aux.new_zeros((0,), dtype=torch.float32)


def mean_confidence(logits_pri: torch.Tensor, kernel_impl: str, world: World = World()) -> torch.Tensor:
    """Mean max-softmax of the primary logits over the global batch, a 0-dim float64 tensor on
    the logits' device (the step never waits for it): under torchrun the sums and counts of every
    rank's shard are all-reduced (a mean of the ranks' means would weigh a short shard like a full
    one), so every rank gets the number one process would get on the concatenated batch."""
    _, conf = confidence_mask(logits_pri, 0.0, impl=kernel_impl)  # (B,) float32
    if world.size == 1:
        return conf.mean().double()  # the float32 mean, widened as float() widened it
    # The count made on the device (torch.full), not copied from the host: no sync there either.
    count = torch.full((), len(conf), dtype=torch.float64, device=conf.device)
    total, count = world.sum(torch.stack([conf.double().sum(), count]))
    return total / count


def route(
    state: MethodState,
    ctx: StepContext,
    score_pri: "callable",
    score_aux: "callable",
    n_aux: int,
    device: torch.device,
    y_aux: torch.Tensor | None = None,
    sizes: list[int] = (),
) -> tuple[torch.Tensor, bool]:
    """(high (Ba,) bool, routed) for this step under the configured aux mode.

    `score_pri()` / `score_aux()` return clean primary logits of the primary / auxiliary batch
    with the model in eval mode; they are only called when the selection needs them, so the
    extra forward passes are paid only in biamat mode after warm-up. Under torchrun omega (and
    each EMA update) comes from the confidence of all ranks' primary batches together, so every
    rank routes with the same omega; each rank scores its own auxiliary samples.
    """
    mode = ctx.method.aux_mode
    if mode == "labels" or (mode in ("biamat", "oracle") and ctx.in_warmup):
        # During warm-up auxiliary samples are attacked as high samples with zero loss weight.
        return torch.ones(n_aux, dtype=torch.bool, device=device), False
    if mode == "uniform":
        return torch.zeros(n_aux, dtype=torch.bool, device=device), False
    if mode == "oracle":  # the data's own groups in place of the confidence test (engine/methods/oracle.py)
        return oracle_high(ctx.aux_related, y_aux, sizes), True
    if mode != "biamat":
        raise ValueError(f"aux_mode {mode!r} does not route auxiliary samples")
    m = ctx.method
    # omega stays a device tensor from here to the comparison: no host sync in the step.
    omega = state.threshold(device)
    if omega is None:
        omega = m.pi * mean_confidence(score_pri(), ctx.kernel_impl, ctx.world)
    elif m.threshold == "ema":
        fresh = m.pi * mean_confidence(score_pri(), ctx.kernel_impl, ctx.world)
        omega = m.ema_momentum * omega + (1.0 - m.ema_momentum) * fresh
    state.set_threshold(omega)
    high, _ = confidence_mask(score_aux(), omega, impl=ctx.kernel_impl)
    return high, True


def count_per_class(y: torch.Tensor, classes: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(classes,) int64: how many of the labels y (N,) are each class (each counted `weights`
    times, an integer or bool (N,) tensor, when given). torch.bincount on CUDA reads the labels'
    min and max back to the host to size its output; a scatter into a zeroed (classes,) tensor
    has its size already and never waits for the device. Labels must lie in [0, classes)."""
    counts = torch.zeros(classes, dtype=torch.int64, device=y.device)
    ones = torch.ones_like(y, dtype=torch.int64) if weights is None else weights.to(torch.int64)
    return counts.index_add_(0, y, ones)


def class_counts(y_aux: torch.Tensor, high: torch.Tensor, sizes: list[int], classes: tuple[int, ...]):
    """Per auxiliary dataset: (seen, high) counts per class for selection.jsonl."""
    seen, chosen = [], []
    for y, h, c in zip(y_aux.split(sizes), high.split(sizes), classes):
        seen.append(count_per_class(y, c))
        chosen.append(count_per_class(y, c, h))
    return seen, chosen


def aux_stats(stats: StepStats, high: torch.Tensor, routed: bool, batch: Batch, sizes: list[int], model: nn.Module,
              loss_high: torch.Tensor, loss_low: torch.Tensor) -> None:
    """Fills the auxiliary part of a step's `stats`: both loss terms, how many auxiliary samples
    went high, and, when the selection routed them, the per-class counts for selection.jsonl."""
    stats.loss_high, stats.loss_low = loss_high.detach(), loss_low.detach()
    stats.n_aux, stats.n_high, stats.routed = len(batch.y_aux), high.sum(), routed
    if routed:
        stats.seen_per_class, stats.high_per_class = class_counts(batch.y_aux, high, sizes, model.aux_classes)
