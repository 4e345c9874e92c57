"""Accuracy under an attack, batch by batch: the loop the trainer and `eval` share."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from engine.attacks import pgd
from kernels.errors import InputError
from loaders.seeds import derive_seed

_ATTACK = re.compile(r"^(clean|fgsm|pgd|cw)(\d*)$")


@dataclass(frozen=True)
class AttackSpec:
    """One white-box attack of the evaluation: `clean`, `fgsm` (one signed-gradient step of size
    eps from the clean image, Goodfellow et al.; the paper's Table 6), `pgdK` (CE) or `cwK`
    (margin, kappa 50)."""

    kind: str
    steps: int = 0

    @property
    def name(self) -> str:
        return self.kind if self.kind in ("clean", "fgsm") else f"{self.kind}{self.steps}"

    @property
    def loss(self) -> str:
        return "cw" if self.kind == "cw" else "ce"

    @property
    def random_start(self) -> bool:
        """FGSM starts from the clean image; PGD and CW from a random point of the ball."""
        return self.kind != "fgsm"

    def step_size(self, eps: float, step_size: float) -> float:
        return eps if self.kind == "fgsm" else step_size


def parse_attack(name: str) -> AttackSpec:
    """`clean`, `fgsm`, `pgd20`, `cw100` -> AttackSpec; anything else is an error naming the forms."""
    match = _ATTACK.match(name.strip().lower())
    single = match is not None and match.group(1) in ("clean", "fgsm")
    if not match or single == bool(match.group(2)):
        raise InputError(f"unknown attack {name!r}: expected clean, fgsm, pgdK or cwK (e.g. pgd100, cw100)")
    kind, steps = match.group(1), 1 if match.group(1) == "fgsm" else int(match.group(2) or 0)
    if kind != "clean" and steps < 1:
        raise InputError(f"attack {name!r} needs at least one step")
    return AttackSpec(kind, steps)


def robust_mask(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackSpec | str = "clean",
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    batch_size: int = 256,
    restarts: int = 1,
    kappa: float = 50.0,
    random_start: bool = True,
    kernel_impl: str = "auto",
    seed: int | None = None,
    first_index: int = 0,
) -> torch.Tensor:
    """(N,) bool: which samples `model` still classifies correctly under `attack`.

    A sample counts as robust only when it is classified correctly clean and after every
    restart (the AutoAttack convention: a robust accuracy can never exceed the clean one).
    The model runs in eval mode; its previous mode is restored.
    images: (N, 3, H, W) float in [0, 1] on the model's device (any memory format).
    With `seed`, each restart of each batch draws its random start after seeding torch from
    (seed, index of the batch's first image + `first_index`, restart): a batch's result then
    depends on its own images only, so images split over ranks in whole batches give what one
    process gives. Without, the random starts continue torch's global generator.
    """
    spec = parse_attack(attack) if isinstance(attack, str) else attack
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    masks = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            with torch.no_grad():
                ok = model(x).argmax(1) == y  # (B,)
            if spec.kind != "clean":
                # FGSM is deterministic: a restart would repeat it.
                for restart in range(restarts if spec.random_start else 1):
                    # Points already broken need no further restart.
                    if not bool(ok.any()):
                        break
                    if seed is not None:
                        torch.manual_seed(derive_seed(seed, first_index + start, restart))
                    x_adv = pgd(model, x, y, eps=eps, step_size=spec.step_size(eps, step_size), steps=spec.steps,
                                loss=spec.loss, kappa=kappa, random_start=random_start and spec.random_start,
                                mode="eval", kernel_impl=kernel_impl)
                    with torch.no_grad():
                        ok &= model(x_adv).argmax(1) == y
            masks.append(ok)
    finally:
        model.train(was_training)
    if not masks:
        return torch.zeros(0, dtype=torch.bool, device=labels.device)
    return torch.cat(masks)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: AttackSpec | str = "clean",
             **options) -> tuple[int, int]:
    """(correct, total) of `model` on (images, labels) under `attack`, model in eval mode;
    `options` (eps, step_size, batch_size, restarts, ...) are those of `robust_mask`."""
    mask = robust_mask(model, images, labels, attack, **options)
    return int(mask.sum()), len(images)
