"""Feature matching: the optimisation behind Ilyas et al.'s robust datasets (2019, "Adversarial
examples are not bugs, they are features"; the BiaMAT paper's Appendix C).

From a start image x_r, normalised L2 gradient descent minimises ||g(x_r) - g(x)||_2, where g is
the model's penultimate representation (the trunk `features`, before any head) and x the target
image. Each step moves every image by exactly `step_size` in L2 along its own negative gradient,
then clips to [0, 1]; Ilyas et al. ran 1000 steps of size 0.1. As their `robustness` library does
(`use_best`), each image keeps the iterate with the lowest distance seen, so a step that
overshoots near the optimum never makes the result worse than an earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attacks import bn_mode, check_unit_range, input_gradients_only
from engine.models.heads import MultiHeadNet


@dataclass(frozen=True)
class Matched:
    """The result of `match_features` for one batch."""

    images: torch.Tensor
    """(B, 3, H, W) float in [0, 1]: per image, the iterate closest to its target's features."""
    start_distance: torch.Tensor
    """(B,) ||g(x_start) - g(x)||_2."""
    distance: torch.Tensor
    """(B,) ||g(images) - g(x)||_2, never above start_distance."""


def feature_distance(feats: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """(B, D), (B, D) -> (B,) per-row L2 distance."""
    return (feats - goal).flatten(1).norm(dim=1)


def match_features(model: MultiHeadNet, start: torch.Tensor, target: torch.Tensor, *,
                   steps: int, step_size: float) -> Matched:
    """Moves each image of `start` (B, 3, H, W) so its features approach those of the same row
    of `target`, by `steps` normalised gradient steps of L2 length `step_size`; the model in eval
    mode, input gradients only."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if start.shape != target.shape:
        raise ValueError(f"start {tuple(start.shape)} and target {tuple(target.shape)} must have one shape")
    check_unit_range(start, "start images")
    check_unit_range(target, "target images")
    with bn_mode(model, "eval"), input_gradients_only(model):
        with torch.no_grad():
            goal = model.features(target)  # (B, D)
        x = start.detach().clone()
        best, best_distance, start_distance = x, None, None
        for _ in range(steps):
            x.requires_grad_(True)
            distance = feature_distance(model.features(x), goal)  # (B,) at x, before this step
            (grad,) = torch.autograd.grad(distance.sum(), x)
            x = x.detach()
            distance = distance.detach()
            if best_distance is None:
                start_distance, best_distance = distance, distance
            best, best_distance = _keep_better(best, best_distance, x, distance)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
            x = (x - step_size * grad / norm).clamp_(0.0, 1.0)
        with torch.no_grad():
            distance = feature_distance(model.features(x), goal)
        best, best_distance = _keep_better(best, best_distance, x, distance)
    return Matched(best, start_distance, best_distance)


def _keep_better(best: torch.Tensor, best_distance: torch.Tensor, x: torch.Tensor,
                 distance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # torch.where rather than a boolean index: no device-to-host sync inside the loop.
    better = distance < best_distance  # (B,)
    return torch.where(better.view(-1, 1, 1, 1), x, best), torch.where(better, distance, best_distance)
