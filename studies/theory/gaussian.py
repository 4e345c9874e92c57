"""The binary Gaussian model of the paper's Section 2.2 (Eq. 4) and Appendix A, in feature space.

    primary:    y ~ U{-1, +1},   z_1 ~ N(y, u^2),            z_2..z_{d+1} ~ N(eta*y, 1)
    auxiliary:  y~ = sign(gamma)*y,  z~_1 ~ N(y|gamma|, v^2),  z~_2..z~_{d+1} ~ N(eta*y|gamma|, 1)

z_1 is the robust feature, z_2..z_{d+1} the non-robust ones. The classifier is logistic and
linear (Eq. 5): the primary head is w, the auxiliary head gamma*w; the paper's example weights
are w = [0, 1/d, ..., 1/d]. The adversary moves a feature vector by at most lam in l-inf (the
paper's lambda, eta < lam < 1: it flips the non-robust features, not the robust one); against a
linear logistic loss the best such move is lam * sign(gradient), exactly.

A target is what the loss pulls sigma(h.z) towards, given as the probability t of class +1:
t = (y+1)/2 for a label y (the primary's y, the auxiliary's y~, a random label q), t = 1/2
for y^ER, the paper's expectation of random labels (uniform over the two classes).

Closed forms: given y, h.z is Gaussian and the adversary's move depends on z only through
sign(h.z), so every expectation the paper takes (adversarial features, gradients with respect to
the features and to the weights) is a one-dimensional Gaussian integral, done here by
Gauss-Legendre quadrature on each side of h.z = 0 (error far below any Monte-Carlo tolerance);
accuracies are normal CDFs. The model is symmetric under y -> -y, so the closed forms are stated
for y = +1; simulated values are aligned by multiplying with y (features and feature gradients;
weight gradients are already symmetric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels.errors import InputError

UNIFORM = 0.5  # the target of y^ER: probability 1/2 for each class


@dataclass(frozen=True, kw_only=True)
class GaussianModel:
    """The parameters of Eq. (4) and the adversary. The paper gives no numbers; the defaults are
    chosen so that its example classifier w = [0, 1/d, ...] is accurate but not robust, as it
    says (standard accuracy Phi(eta*sqrt(d)) = 99.9 %, robust accuracy Phi((eta - lam)*sqrt(d)) = 2.3 %)."""

    d: int = 100
    """Number of non-robust features (the feature vector has d + 1 entries)."""
    eta: float = 0.3
    """Mean of a non-robust feature times y; 0 < eta < lam."""
    u: float = 1.0
    """Standard deviation of the primary robust feature z_1."""
    v: float = 1.0
    """Standard deviation of the auxiliary robust feature z~_1."""
    gamma: float = 1.0
    """Correlation between the tasks, in [-1, 1], not 0: |gamma| = 1 is the paper's Section 2.2,
    |gamma| < 1 its Appendix A.1."""
    lam: float = 0.5
    """The adversary's l-inf radius in feature space (the paper's lambda); eta < lam < 1."""

    def __post_init__(self) -> None:
        if not (isinstance(self.d, int) and self.d >= 1):
            raise InputError(f"d (the number of non-robust features) must be an integer >= 1; got {self.d!r}")
        for name in ("u", "v"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} (a standard deviation) must be positive and finite; got {value}")
        if not (math.isfinite(self.gamma) and -1 <= self.gamma <= 1 and self.gamma != 0):
            raise InputError(f"gamma must be in [-1, 1] and not 0 (at 0 the auxiliary label sign(gamma)*y is "
                             f"undefined); got {self.gamma}")
        if not (0 < self.eta < self.lam < 1):
            raise InputError(f"the paper's model needs 0 < eta < lam < 1 (the adversary flips the non-robust "
                             f"features, mean eta, but not the robust one, mean 1); got eta={self.eta}, lam={self.lam}")

    def means(self, auxiliary: bool = False) -> np.ndarray:
        """E[z | y = +1], shape (d + 1,)."""
        scale = abs(self.gamma) if auxiliary else 1.0
        return scale * np.array([1.0] + [self.eta] * self.d)

    def stds(self, auxiliary: bool = False) -> np.ndarray:
        """Per-feature standard deviations, shape (d + 1,)."""
        return np.array([self.v if auxiliary else self.u] + [1.0] * self.d)

    def aux_head(self) -> float:
        """The auxiliary head is gamma * w (Eq. 5)."""
        return self.gamma

    def aux_label(self, y: np.ndarray) -> np.ndarray:
        """y~ = sign(gamma) * y."""
        return math.copysign(1.0, self.gamma) * y


def paper_weights(d: int, robust: float = 0.0) -> np.ndarray:
    """w = [robust, 1/d, ..., 1/d]: Eq. (5) with robust = 0; Theorem 3 assumes robust > 0."""
    return np.array([robust] + [1.0 / d] * d)


def sample(model: GaussianModel, n: int, rng: np.random.Generator, auxiliary: bool = False
           ) -> tuple[np.ndarray, np.ndarray]:
    """n draws of (z, y): z (n, d+1), y (n,) in {-1, +1}. For the auxiliary distribution y is the
    primary-class variable of Eq. (4); its label is `model.aux_label(y)`."""
    y = rng.choice(np.array([-1.0, 1.0]), size=n)
    z = y[:, None] * model.means(auxiliary) + model.stds(auxiliary) * rng.standard_normal((n, model.d + 1))
    return z, y


def label_target(labels: np.ndarray) -> np.ndarray:
    """t = (label + 1) / 2: the probability of class +1 a hard label asks for."""
    return (labels + 1.0) / 2.0


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # no overflow warning for large |a|


def attack(z: np.ndarray, w: np.ndarray, head: float, t: np.ndarray | float, lam: float) -> np.ndarray:
    """The best l-inf move of radius lam against the loss CE(sigma(head * w.z), t), per row of z.

    For a hard target the loss falls with (2t - 1) * h.z, so the move is -lam*(2t-1)*sign(h); for
    t = 1/2 the loss grows with |h.z|, so the move is lam*sign(h)*sign(h.z) (away from the boundary).
    """
    h = head * w
    t = np.broadcast_to(np.asarray(t, dtype=float), z.shape[:1])
    direction = np.where(t == UNIFORM, np.sign(z @ h), 1.0 - 2.0 * t)  # (n,)
    return z + lam * direction[:, None] * np.sign(h)[None, :]


def gradients(z_adv: np.ndarray, w: np.ndarray, head: float, t: np.ndarray | float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradients of CE(sigma(head * w.z_adv), t): with respect to the features z_adv
    (what flows back into the embedding g) and to the weights w. Both (n, d+1)."""
    h = head * w
    residual = sigmoid(z_adv @ h) - t  # (n,)
    return residual[:, None] * h[None, :], head * residual[:, None] * z_adv


def loss(z_adv: np.ndarray, w: np.ndarray, head: float, t: np.ndarray | float) -> np.ndarray:
    """Per-sample CE(sigma(head * w.z_adv), t) = t*softplus(-a) + (1-t)*softplus(a)."""
    a = z_adv @ (head * w)
    return t * np.logaddexp(0.0, -a) + (1.0 - t) * np.logaddexp(0.0, a)


# --- closed forms -------------------------------------------------------------------------------

def normal_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, dtype=float) / math.sqrt(2.0)))


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(160)
_SPAN = 12.0  # standard deviations: the normal mass beyond is below 1e-32


def normal_integral(f, mean: float, std: float, lo: float = -math.inf, hi: float = math.inf,
                    split: float | None = 0.0) -> float:
    """The integral of f(x) * N(x; mean, std^2) over [lo, hi], by Gauss-Legendre quadrature on
    each side of `split` (where f may jump). f takes and returns numpy arrays."""
    lo, hi = max(lo, mean - _SPAN * std), min(hi, mean + _SPAN * std)
    if lo >= hi:
        return 0.0
    edges = [lo] + ([split] if split is not None and lo < split < hi else []) + [hi]
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        x = 0.5 * (b - a) * _NODES + 0.5 * (b + a)
        density = np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))
        total += 0.5 * (b - a) * float(np.sum(_WEIGHTS * f(x) * density))
    return total


@dataclass(frozen=True)
class Expected:
    """Expectations given y = +1 under one (distribution, head, target) with the adversary in
    play; every vector has shape (d + 1,)."""

    z_adv: np.ndarray  # E[z^adv]
    grad_z: np.ndarray  # E[d loss / d z^adv]
    grad_w: np.ndarray  # E[d loss / d w]
    loss: float  # E[loss(z^adv)]


def expected(model: GaussianModel, w: np.ndarray, head: float, t: float, lam: float,
             auxiliary: bool = False) -> Expected:
    """Closed forms of the expectations the paper takes, given y = +1, for a target t in
    {0, 1/2, 1} (for random labels, average t = 0 and t = 1: `expected_random`).

    With a = h.z ~ N(mu, S^2), the move is delta = -lam*(2t-1)*sign(h) (hard t) or
    lam*sign(h)*sign(a) (t = 1/2), so with f(a) = sigma(a + h.delta) - t:
    E[grad_z] = h E[f];  E[grad_w] = head (m E[f] + h s^2/S^2 E[f (a - mu)] + E[f delta]),
    from E[z | a] = m + h s^2 (a - mu)/S^2.
    """
    m, s = model.means(auxiliary), model.stds(auxiliary)
    h = head * w
    mu, var = float(h @ m), float(np.sum(h * h * s * s))
    if var == 0.0:
        raise ValueError("the weights are all zero: the classifier is constant and the closed forms degenerate")
    std, l1 = math.sqrt(var), float(np.sum(np.abs(h)))
    if t == UNIFORM:
        def shift(a):
            return lam * l1 * np.sign(a)
    else:
        def shift(a):
            return -lam * l1 * (2.0 * t - 1.0) + 0.0 * a

    def residual(a):
        return sigmoid(a + shift(a)) - t

    def ce(a):
        b = a + shift(a)
        return t * np.logaddexp(0.0, -b) + (1.0 - t) * np.logaddexp(0.0, b)

    e_f = normal_integral(residual, mu, std)
    e_fa = normal_integral(lambda a: residual(a) * (a - mu), mu, std)
    if t == UNIFORM:
        e_sign = 2.0 * float(normal_cdf(mu / std)) - 1.0
        move = lam * np.sign(h) * e_sign  # E[delta]
        e_f_delta = lam * np.sign(h) * normal_integral(lambda a: residual(a) * np.sign(a), mu, std)
    else:
        move = -lam * (2.0 * t - 1.0) * np.sign(h)
        e_f_delta = move * e_f
    grad_w = head * (m * e_f + h * s * s / var * e_fa + e_f_delta)
    return Expected(z_adv=m + move, grad_z=h * e_f, grad_w=grad_w, loss=normal_integral(ce, mu, std))


def expected_random(model: GaussianModel, w: np.ndarray, head: float, lam: float,
                    auxiliary: bool = True) -> Expected:
    """Eq. (8): random labels q ~ U{-1, +1}, independent of y: the average of the two hard targets."""
    one, zero = (expected(model, w, head, t, lam, auxiliary) for t in (1.0, 0.0))
    return Expected(z_adv=(one.z_adv + zero.z_adv) / 2, grad_z=(one.grad_z + zero.grad_z) / 2,
                    grad_w=(one.grad_w + zero.grad_w) / 2, loss=(one.loss + zero.loss) / 2)


def accuracy(model: GaussianModel, w: np.ndarray, eps: float = 0.0) -> float:
    """Accuracy of sign(w.z) on the primary distribution under the best l-inf attack of radius
    eps (x - eps*y*sign(w)): y w.z - eps||w||_1 ~ N(w.m - eps||w||_1, sum w^2 s^2), so the
    accuracy is Phi(mean / std). eps = 0 gives the standard accuracy."""
    m, s = model.means(), model.stds()
    std = math.sqrt(float(np.sum(w * w * s * s)))
    if std == 0.0:
        return 0.0  # sign(0) is never a class
    return float(normal_cdf((float(w @ m) - eps * float(np.sum(np.abs(w)))) / std))


def empirical_accuracy(w: np.ndarray, z: np.ndarray, y: np.ndarray, eps: float = 0.0) -> float:
    """The same accuracy measured on samples, under the attack z - eps*y*sign(w)."""
    z_adv = z - eps * y[:, None] * np.sign(w)[None, :]
    return float(np.mean(y * (z_adv @ w) > 0))


def er_feature_sign_probability(model: GaussianModel, w: np.ndarray, head: float, lam: float, j: int,
                                auxiliary: bool = True) -> float:
    """P(sign(z_j^adv) = y) under y^ER (t = 1/2), where z_j^adv = z_j + lam*sign(h_j)*sign(h.z):
    the move depends on z_j through h.z, so condition on z_j = x, under which h.z is Gaussian
    with mean mu + h_j (x - m_j) and the variance of the other features' part."""
    m, s = model.means(auxiliary), model.stds(auxiliary)
    h = head * w
    mu = float(h @ m)
    rest = math.sqrt(float(np.sum(h * h * s * s)) - (h[j] * s[j]) ** 2)
    step = lam * float(np.sign(h[j]))

    def positive(x):  # P(h.z > 0 | z_j = x)
        centre = mu + h[j] * (x - m[j])
        return normal_cdf(centre / rest) if rest > 0 else (centre > 0).astype(float)

    # z_j^adv > 0 with move +step (h.z > 0) needs x > -step; with -step (h.z < 0), x > step.
    return (normal_integral(positive, m[j], s[j], lo=-step, split=None)
            + normal_integral(lambda x: 1.0 - positive(x), m[j], s[j], lo=step, split=None))
