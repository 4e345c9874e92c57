"""Adversarial training of the linear classifier of the paper's Section 2.2, on primary data plus
auxiliary data under each auxiliary target, by full-batch gradient descent on a finite sample
and, beside it, on the closed-form expected gradient (the paper's "infinite batch").

The classifier is sign(w.z) with a logistic loss; the auxiliary data are trained as BiaMAT
routes them: `labels` with their own label y~ through the auxiliary head gamma*w, `uniform`
with y^ER through the shared primary head w (the paper's choice "to close the gap between the
theory and practice"), `none` not at all (plain adversarial training). Each step attacks every
sample with the best l-inf move of radius lam against the current w, then moves
w -= lr * (mean primary gradient + alpha * mean auxiliary gradient), the loss of Eq. (1).
Training starts from the paper's accurate but non-robust w = [0, 1/d, ..., 1/d] (Eq. 5).
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import numpy as np

from kernels.errors import InputError
from studies.theory.gaussian import (UNIFORM, GaussianModel, accuracy, attack, expected, gradients, label_target,
                                    paper_weights, sample)

MODES = ("none", "labels", "uniform")


@dataclass
class Trajectory:
    """Per step (step 0 = the start): the robust weight, the mean non-robust weight, and the
    primary population's standard and robust accuracy of sign(w.z) (closed form)."""

    mode: str
    w_robust: list[float] = field(default_factory=list)
    w_nonrobust: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    robust_accuracy: list[float] = field(default_factory=list)

    def record(self, model: GaussianModel, w: np.ndarray) -> None:
        self.w_robust.append(float(w[0]))
        self.w_nonrobust.append(float(np.mean(w[1:])))
        self.accuracy.append(accuracy(model, w))
        self.robust_accuracy.append(accuracy(model, w, model.lam))


def lr_at(lr: float, k: int, steps: int) -> float:
    """The step size of step k: decays linearly to 0. The adversarial loss of a linear model
    carries lam * ||w||_1, whose kinks make a constant step circle around w_i = 0 (the non-robust
    weights Lemma 1 sends to 0) instead of settling there."""
    return lr * (1.0 - k / steps)


def _aux_task(model: GaussianModel, mode: str) -> tuple[float, float | None]:
    """(head, target given y = +1) of the auxiliary loss; target None: no auxiliary loss."""
    if mode == "labels":
        return model.aux_head(), float(label_target(np.sign(model.gamma)))
    if mode == "uniform":
        return 1.0, UNIFORM
    return 1.0, None


def check_schedule(steps: int, lr: float, alpha: float) -> None:
    if steps < 0:
        raise InputError(f"steps must be >= 0; got {steps}")
    if not 0 < lr < math.inf:
        raise InputError(f"lr must be positive and finite; got {lr}")
    if not 0 <= alpha < math.inf:
        raise InputError(f"alpha (the auxiliary loss weight of Eq. 1) must be finite and >= 0; got {alpha}")


def _check(mode: str, steps: int, lr: float, alpha: float) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    check_schedule(steps, lr, alpha)


def train_sampled(model: GaussianModel, mode: str, n_primary: int, n_aux: int, steps: int, lr: float,
                  alpha: float, seed: int) -> Trajectory:
    """Full-batch adversarial training on n_primary primary and n_aux auxiliary samples, drawn
    from `seed` (the same draws for every mode, so the modes differ only in the target)."""
    _check(mode, steps, lr, alpha)
    if n_primary < 1 or n_aux < 1:
        raise InputError(f"the training sets need at least one sample each; got {n_primary} primary, {n_aux} auxiliary")
    rng = np.random.default_rng(seed)
    z, y = sample(model, n_primary, rng)
    za, ya = sample(model, n_aux, rng, auxiliary=True)
    head, _ = _aux_task(model, mode)
    t_pri = label_target(y)
    t_aux = label_target(model.aux_label(ya)) if mode == "labels" else UNIFORM
    w = paper_weights(model.d)
    path = Trajectory(mode)
    path.record(model, w)
    for k in range(steps):
        _, grad = gradients(attack(z, w, 1.0, t_pri, model.lam), w, 1.0, t_pri)
        step = grad.mean(axis=0)
        if mode != "none":
            _, grad_aux = gradients(attack(za, w, head, t_aux, model.lam), w, head, t_aux)
            step = step + alpha * grad_aux.mean(axis=0)
        w = w - lr_at(lr, k, steps) * step
        path.record(model, w)
    return path


def train_expected(model: GaussianModel, mode: str, steps: int, lr: float, alpha: float) -> Trajectory:
    """The same descent on the closed-form expected gradients: infinitely many samples of each."""
    _check(mode, steps, lr, alpha)
    head, t_aux = _aux_task(model, mode)
    w = paper_weights(model.d)
    path = Trajectory(mode)
    path.record(model, w)
    for k in range(steps):
        step = expected(model, w, 1.0, 1.0, model.lam).grad_w
        if t_aux is not None:
            step = step + alpha * expected(model, w, head, t_aux, model.lam, auxiliary=True).grad_w
        w = w - lr_at(lr, k, steps) * step
        path.record(model, w)
    return path
