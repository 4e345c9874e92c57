"""Standard (non-adversarial) training: the routed CE objective of AT on the clean batch.

No attack: one loss pass over the clean [x_pri; x_aux] with the same heads and auxiliary modes
as AT (labels: CE through each dataset's head; uniform: soft-CE to uniform through f_pri;
biamat: the confidence routing with omega, scored on clean inputs; none). It equals AT with
eps = 0 and no attack steps. The paper trains so in Appendix B (Table 5: ResNet-18 on cifar-A
with extra data) and Appendix C (models trained on robust datasets).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.routed_ce import routed_ce
from loaders.types import Batch


def standard_step(model: nn.Module, batch: Batch, state: MethodState,
                  ctx: StepContext) -> tuple[torch.Tensor, StepStats]:
    objective = routed_ce(model, batch, state, ctx)
    model.train()
    with ctx.autocast():
        (logits,) = ctx.train_logits(model, [objective.x_nat], objective.sizes)  # the loss pass
    return objective.loss(model, logits, ctx)
