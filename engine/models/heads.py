"""What every architecture shares around its trunk: the normalisation buffers, the primary head
`fc`, one head per auxiliary dataset `aux_fc[i]`, and the initialisation.

The engine reads a model only through this interface (`features`, `heads`, `forward`, `fc`,
`aux_fc`, `num_classes`, `aux_classes`, `feature_dim`, `drop_rate`, `mu`, `sigma`), so a new
architecture subclasses `MultiHeadNet` and writes its trunk in `features`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class MultiHeadNet(nn.Module):
    """A shared trunk `features` with a primary head and auxiliary heads.

    `forward(x)` returns primary logits (the robust classifier h_pri); a training step calls
    `features` (possibly compiled) once on the combined batch, then `heads`. Inputs are float in
    [0, 1]; the trunk normalises them with the `mu` / `sigma` buffers first.
    """

    num_classes: int
    aux_classes: tuple[int, ...]
    feature_dim: int
    drop_rate: float = 0.0

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

    def load_trained(self, state: dict[str, torch.Tensor]) -> tuple[list[float], list[float]] | None:
        """Loads `state` (weights, BatchNorm statistics and the mu / sigma buffers the weights were
        trained to see, which win over the ones this model was built with); returns the built
        (mean, std) when the loaded normalisation differs from them, else None, for the caller's
        warning (a resumed run, a fine-tune from another run)."""
        built = self.mu.clone(), self.sigma.clone()
        self.load_state_dict(state)
        if torch.equal(built[0], self.mu) and torch.equal(built[1], self.sigma):
            return None
        return built[0].flatten().tolist(), built[1].flatten().tolist()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
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
