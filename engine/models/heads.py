"""What every architecture shares around its trunk: the input normalisation (per-channel buffers
or per-image standardisation), the primary head `fc`, one head per auxiliary dataset `aux_fc[i]`,
and the initialisation.

The engine reads a model only through this interface (`features`, `heads`, `forward`, `fc`,
`aux_fc`, `num_classes`, `aux_classes`, `feature_dim`, `drop_rate`, `mu`, `sigma`,
`normalization`), so a new architecture subclasses `MultiHeadNet` and writes its trunk in
`features`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from kernels.errors import InputError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

PER_CHANNEL = "per-channel"
"""(x - mu) / sigma with the model's buffers (mean 0, std 1 for inputs as they are)."""
PER_IMAGE = "per-image"
"""Each image standardised on its own, as the reference AT code's `tf.image.per_image_standardization`
(`per_image_standardization`)."""
NORMALIZATIONS = (PER_CHANNEL, PER_IMAGE)


# The reference AT code standardises images of 0-255 pixels (its config's epsilon is 8.0), so its
# floor of 1/sqrt(N) is 1/(255 sqrt(N)) in the [0, 1] units the engine's models take.
REFERENCE_PIXEL_SCALE = 255.0


def per_image_standardization(x: torch.Tensor, pixel_scale: float = REFERENCE_PIXEL_SCALE) -> torch.Tensor:
    """(B, C, H, W) -> TensorFlow's `per_image_standardization` of `pixel_scale * x`: each image
    minus its mean over all its pixels and channels, divided by max(std, 1/sqrt(N)), N = C*H*W,
    in those units; in the layout and dtype of `x`. Scaling cancels except in the floor, so this
    is (x - mean) / max(std, 1/(pixel_scale sqrt(N))).

    The statistics are taken in fp32 whatever autocast or the input's dtype, as TF does. The
    floor is applied to the variance (sqrt(max(var, floor^2)), the same number), so a constant
    image (std 0) gets a finite gradient where max(sqrt(var), floor) gives 0 * inf = NaN."""
    x32 = x.float()
    floor_var = 1.0 / (x[0].numel() * pixel_scale**2)
    mean = x32.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    centred = x32 - mean
    var = centred.square().mean(dim=(1, 2, 3), keepdim=True)  # population variance, as TF
    return (centred / var.clamp_min(floor_var).sqrt()).to(x.dtype)


class MultiHeadNet(nn.Module):
    """A shared trunk `features` with a primary head and auxiliary heads.

    `forward(x)` returns primary logits (the robust classifier h_pri); a training step calls
    `features` (possibly compiled) once on the combined batch, then `heads`. Inputs are float in
    [0, 1]; the trunk normalises them first: with the `mu` / `sigma` buffers (`normalization`
    = per-channel), or each image on its own (per-image; the buffers then stay mean 0, std 1).
    `normalization` is not in the state dict (RobustBench's key names have no place for it): the
    model card records it, and `engine.models.load` rebuilds it from there.
    """

    num_classes: int
    aux_classes: tuple[int, ...]
    feature_dim: int
    drop_rate: float = 0.0
    normalization: str = PER_CHANNEL

    def _add_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.register_buffer("mu", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def _add_heads(self, feature_dim: int, num_classes: int, aux_classes: Sequence[int]) -> None:
        self.num_classes = num_classes
        self.aux_classes = tuple(int(c) for c in aux_classes)
        self.feature_dim = feature_dim
        self.fc = nn.Linear(feature_dim, num_classes)
        self.aux_fc = nn.ModuleList(nn.Linear(feature_dim, c) for c in self.aux_classes)

    def _init_weights(self) -> None:
        # He-normal convs, unit BN, zero linear bias: the reference WRN's initialisation, and
        # torchvision's for its ResNets.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def set_normalization(self, kind: str) -> None:
        """Per-channel (the buffers) or per-image standardisation, which needs identity buffers."""
        if kind not in NORMALIZATIONS:
            raise ValueError(f"normalization {kind!r} is not one of {', '.join(NORMALIZATIONS)}")
        # A model sized on the meta device (engine/models/files.py) has no values to check.
        if kind == PER_IMAGE and self.mu.device.type != "meta" and not (
                bool((self.mu == 0).all()) and bool((self.sigma == 1).all())):
            raise InputError("per-image standardisation takes no per-channel mean and std: build the model "
                             f"with mean 0 and std 1 (got {self.mu.flatten().tolist()} / {self.sigma.flatten().tolist()})")
        self.normalization = kind

    def describe_normalization(self) -> str:
        """For people: what this model does to its [0, 1] inputs."""
        if self.normalization == PER_IMAGE:
            return "per-image standardisation"
        return f"mean {self.mu.flatten().tolist()} / std {self.sigma.flatten().tolist()}"

    def load_trained(self, state: dict[str, torch.Tensor], normalization: str = PER_CHANNEL) -> str | None:
        """Loads `state` (weights, BatchNorm statistics and the mu / sigma buffers the weights were
        trained to see) and takes `normalization`, the kind their model card records (cards
        without one are per-channel): both win over what this model was built with. Returns the
        built normalisation, described, when the loaded one differs from it, else None, for the
        caller's warning (a resumed run, a fine-tune from another run)."""
        built, built_kind = self.describe_normalization(), self.normalization
        before = self.mu.clone(), self.sigma.clone()
        self.load_state_dict(state)
        self.set_normalization(normalization)
        if built_kind == self.normalization and torch.equal(before[0], self.mu) and torch.equal(before[1], self.sigma):
            return None
        return built

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalization == PER_IMAGE:
            return per_image_standardization(x)
        return (x - self.mu) / self.sigma

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, feature_dim) pooled features."""
        raise NotImplementedError

    def heads(self, feats: torch.Tensor, aux_sizes: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features (N, D) -> primary logits (N, c) of every row, and, per auxiliary dataset, the
        logits of its chunk of the last sum(aux_sizes) rows through its own head (the combined
        batch is [x_pri; x_aux], auxiliary datasets in order)."""
        # Logits are float32 whatever the autocast: every loss, softmax and attack objective reads
        # them in float32 anyway, .float() is a no-op outside autocast, and under it a cast of
        # (N, classes) values, nothing next to the trunk.
        logits_pri = self.fc(feats).float()
        if not aux_sizes:
            return logits_pri, []
        feats_aux = feats[len(feats) - sum(aux_sizes):]  # (Ba, D)
        return logits_pri, [head(f).float() for head, f in zip(self.aux_fc, feats_aux.split(list(aux_sizes)))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)).float()  # float32 logits, as `heads`
