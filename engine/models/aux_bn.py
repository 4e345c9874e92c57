"""Separate BatchNorm for the auxiliary images (`model.aux_bn = "separate"`, beyond the paper).

The reference normalises the combined batch [x_pri; x_aux] with one BatchNorm, so the primary
images are normalised with statistics half made of auxiliary images; where the two sets' low-level
statistics differ, that slows the primary's learning. Here every BatchNorm2d of the trunk becomes
a `DomainBatchNorm2d`: the primary BatchNorm itself (its keys unchanged, so the trunk keeps
RobustBench's WideResNet key names) plus a second one, `aux_bn` (keys `....aux_bn.*`), for the
trailing auxiliary rows of a combined batch.

The split travels as an attribute set around the trunk call (`aux_rows`), not as an argument,
so every architecture's `features(x)` stays as it is and the compiled trunk sees it as a guarded
constant (one compiled variant per split size, like the batch sizes). Without `aux_rows` (the
evaluation, the export, omega's primary batch) every row goes through the primary BatchNorm.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

AUX_BN = "aux_bn"
"""The submodule name of the auxiliary BatchNorm; its keys hold `.aux_bn.`, which export drops."""


class DomainBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d (the primary's, under the usual keys) with a second one, `aux_bn`, that
    normalises the last `aux_rows` rows of its input on their own statistics and affine."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.aux_bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.aux_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        n = self.aux_rows
        if n == 0:
            return super().forward(x)
        if n >= len(x):
            return self.aux_bn(x)
        cut = len(x) - n
        return torch.cat([super().forward(x[:cut]), self.aux_bn(x[cut:])])


def separate_aux_bn(model: nn.Module) -> nn.Module:
    """Replaces every plain BatchNorm2d of `model` by a `DomainBatchNorm2d` holding the same
    state, whose auxiliary set starts as a copy of it; returns `model`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                bn = DomainBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
                bn.to(device=child.weight.device)
                state = child.state_dict()
                bn.load_state_dict({**state, **{f"{AUX_BN}.{k}": v for k, v in state.items()}})
                setattr(parent, name, bn)
    return model


def has_aux_bn(model: nn.Module) -> bool:
    return any(isinstance(m, DomainBatchNorm2d) for m in model.modules())


def is_aux_bn_key(key: str) -> bool:
    """Whether a state-dict key belongs to an auxiliary BatchNorm (left out of the export)."""
    return f".{AUX_BN}." in f".{key}"


def with_aux_bn_from_primary(model_keys, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` (of a model with shared BatchNorm, e.g. a pre-training) completed for a model
    whose keys `model_keys` hold auxiliary BatchNorms: each missing auxiliary entry starts as a
    copy of its primary BatchNorm's, as `separate_aux_bn` starts a fresh model."""
    extra = {k: weights[k.replace(f".{AUX_BN}.", ".")] for k in model_keys
             if is_aux_bn_key(k) and k not in weights and k.replace(f".{AUX_BN}.", ".") in weights}
    return {**weights, **extra}


@contextlib.contextmanager
def aux_rows(model: nn.Module, n: int) -> Iterator[None]:
    """Within the block, the last `n` rows of each trunk input are auxiliary images and go
    through the auxiliary BatchNorms; a model with shared BatchNorm is left as it is."""
    layers = [m for m in model.modules() if isinstance(m, DomainBatchNorm2d)] if n else []
    for m in layers:
        m.aux_rows = n
    try:
        yield
    finally:
        for m in layers:
            m.aux_rows = 0
