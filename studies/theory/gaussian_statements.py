"""The statements of the paper's Section 2.2 and Appendix A, each measured on samples and set
beside its closed form (studies/theory/gaussian.py).

Every simulated value is a mean over n samples of a per-sample value (aligned with y where the
model's symmetry makes the raw mean 0), so its Monte-Carlo tolerance is Z standard errors,
Z * sd / sqrt(n) with the sample's own sd: `agrees` says the simulation matches the closed form
within it, `holds` says the simulation bears out the paper's claim within it (an equality within
the tolerance, a sign beyond it, "with high probability" as a probability above 1/2 beyond it).
With some 20 rows at Z = 4, a correct closed form fails a row by chance about once in 1000 runs.

Two kinds of statement are checked: the paper's, about the gradient with respect to the features
(what flows back into the shared embedding g), and their reading for the linear head's weights,
the update a gradient step makes on the robust weight w_1 and the non-robust weights w_2..w_{d+1}.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from kernels.errors import InputError
from studies.theory.gaussian import (UNIFORM, GaussianModel, attack, er_feature_sign_probability, expected,
                                    expected_random, gradients, label_target, normal_cdf, paper_weights, sample)

Z = 4.0  # standard errors of Monte-Carlo tolerance


@dataclass(frozen=True)
class Statement:
    source: str  # where in the paper: "Lemma 2 (Eq. 6)"
    quantity: str  # what is measured, e.g. "y E[z~_i^adv]"
    paper: str  # the paper's claim about it, "-" where the paper makes none
    closed_form: float
    simulated: float
    tolerance: float  # Z standard errors of `simulated`
    agrees: bool  # |simulated - closed_form| <= tolerance
    holds: bool | None  # the paper's claim, in simulation; None where the paper makes none
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _judge(claim: tuple, simulated: float, tolerance: float) -> bool | None:
    kind = claim[0]
    if kind == "equal":
        return bool(abs(simulated - claim[1]) <= tolerance)
    if kind == "positive":
        return bool(simulated > tolerance)
    if kind == "negative":
        return bool(simulated < -tolerance)
    if kind == "likely":  # "with high probability": more often than not, beyond the noise
        return bool(simulated - 0.5 > tolerance)
    return None


def _row(source: str, quantity: str, paper: str, values: np.ndarray, closed: float, claim: tuple,
         note: str = "") -> Statement:
    """One statement from the per-sample values (n,) whose mean estimates `closed`."""
    simulated = float(np.mean(values))
    tolerance = Z * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return Statement(source=source, quantity=quantity, paper=paper, closed_form=float(closed), simulated=simulated,
                     tolerance=tolerance, agrees=bool(abs(simulated - closed) <= tolerance),
                     holds=_judge(claim, simulated, tolerance), note=note)


def _nonrobust(values: np.ndarray) -> np.ndarray:
    """Per-sample mean over the non-robust coordinates (all alike in the model)."""
    return values[:, 1:].mean(axis=1)


def statements(model: GaussianModel, n: int, seed: int, robust_weight: float) -> list[Statement]:
    """Every statement on n fresh primary and n fresh auxiliary samples. The weights are the
    paper's w = [0, 1/d, ...] (Eq. 5), and [robust_weight, 1/d, ...] where the paper assumes
    w_1 > 0 (Theorem 3) and for the weight updates."""
    if robust_weight <= 0:
        raise InputError(f"robust_weight (w_1 of Theorem 3) must be positive; got {robust_weight}")
    if n < 2:
        raise InputError(f"samples must be at least 2 to estimate a Monte-Carlo tolerance; got {n}")
    rng = np.random.default_rng(seed)
    lam, g, sg = model.lam, abs(model.gamma), math.copysign(1.0, model.gamma)
    strong = g == 1.0  # the paper's Section 2.2; otherwise its Appendix A.1 (Theorems 4-6)
    w0, w1 = paper_weights(model.d), paper_weights(model.d, robust_weight)
    z, y = sample(model, n, rng)
    za, ya = sample(model, n, rng, auxiliary=True)
    q = rng.choice(np.array([-1.0, 1.0]), size=n)
    t_pri, t_aux, t_q = label_target(y), label_target(model.aux_label(ya)), label_target(q)
    t_aux_closed = label_target(sg)  # the auxiliary label when y = +1
    head = model.aux_head()
    yc = ya[:, None]
    rows = []

    # Lemma 2: the adversarial auxiliary features under the true labels, w = [0, 1/d, ...].
    adv = attack(za, w0, head, t_aux, lam)
    exact = expected(model, w0, head, t_aux_closed, lam, auxiliary=True)
    scale_note = "" if strong else "Eq. 4 gives |gamma| times the paper's value; its proof takes |gamma| = 1"
    rows.append(_row("Lemma 2 (Eq. 6)", "y E[z~_1^adv]", "= 1", ya * adv[:, 0], exact.z_adv[0], ("equal", 1.0),
                     scale_note))
    rows.append(_row("Lemma 2 (Eq. 6)", "y E[z~_i^adv], i >= 2", f"= eta - lam = {model.eta - lam:.4g}",
                     _nonrobust(yc * adv), exact.z_adv[1], ("equal", model.eta - lam), scale_note))

    # Theorem 1 (|gamma| = 1) / 4: the feature gradient of the auxiliary task is the primary's.
    primary = expected(model, w0, 1.0, 1.0, lam)
    grad_pri, _ = gradients(attack(z, w0, 1.0, t_pri, lam), w0, 1.0, t_pri)
    grad_aux, _ = gradients(adv, w0, head, t_aux)
    rows.append(_row("Theorem 1 (Eq. 7)", "y E[dl/dz_i^adv] (primary)", "< 0 (sign -y, that of E[z_i^adv])",
                     _nonrobust(y[:, None] * grad_pri), primary.grad_z[1], ("negative",)))
    if strong:
        rows.append(_row("Theorem 1 (Eq. 7)", "y E[dl~/dz~_i^adv] (auxiliary, labels)",
                         f"= the primary's, {primary.grad_z[1]:.4g}", _nonrobust(yc * grad_aux), exact.grad_z[1],
                         ("equal", primary.grad_z[1])))
    else:
        rows.append(_row("Theorem 4 (Eq. 31)", "y E[dl~/dz~_i^adv] (auxiliary, labels)", "< 0 (sign -y)",
                         _nonrobust(yc * grad_aux), exact.grad_z[1], ("negative",),
                         f"|gamma| = {g:g} shrinks it (primary: {primary.grad_z[1]:.4g})"))

    # Theorems 2 / 5 and 3 / 6: random labels q, independent of y (Eq. 8).
    thm_nr, thm_r = ("Theorem 2 (Eq. 9)", "Theorem 3 (Eq. 10)") if strong else ("Theorem 5 (Eq. 32)",
                                                                               "Theorem 6 (Eq. 33)")
    against = -sg * q[:, None]  # the sign -gamma^ q both theorems predict
    adv_q = attack(za, w0, head, t_q, lam)
    grad_q, _ = gradients(adv_q, w0, head, t_q)
    flip = 0.5 * (normal_cdf(lam - model.eta * g) + normal_cdf(lam + model.eta * g))
    rows.append(_row(thm_nr, "P(sign z~_i^adv = -gamma^ q)", "high (> 1/2)",
                     _nonrobust(np.sign(adv_q) == against), flip, ("likely",)))
    rows.append(_row(thm_nr, "P(sign dl~/dz~_i^adv = -gamma^ q)", "high (> 1/2)",
                     _nonrobust(np.sign(grad_q) == against), 1.0, ("likely",), "always, for w_i > 0"))
    adv_q1 = attack(za, w1, head, t_q, lam)
    grad_q1, _ = gradients(adv_q1, w1, head, t_q)
    keep = 0.5 * (normal_cdf((g - lam) / model.v) + normal_cdf((g + lam) / model.v))
    rows.append(_row(thm_r, "P(sign z~_1^adv = y), w_1 > 0", "high (> 1/2)", np.sign(adv_q1[:, 0]) == ya, keep,
                     ("likely",)))
    rows.append(_row(thm_r, "P(sign dl~/dz~_1^adv = -gamma^ q), w_1 > 0", "high (> 1/2)",
                     np.sign(grad_q1[:, 0]) == against[:, 0], 1.0, ("likely",), "always, for w_1 > 0"))
    random_closed = expected_random(model, w1, head, lam)
    rows.append(_row("Sec. 2.2 after Thm 3", "y E[dl~/dz~_1^adv] over q, w_1 > 0",
                     "= 0 (infinite batch, model still vulnerable)", ya * grad_q1[:, 0], random_closed.grad_z[0],
                     ("equal", 0.0), "exact value != 0: |dl~/dz~_1^adv| depends on q unless the attack always wins"))

    # y^ER (Eqs. 26-30): the expectation of random labels, t = 1/2, head gamma * w.
    adv_er = attack(za, w0, head, UNIFORM, lam)
    grad_er, _ = gradients(adv_er, w0, head, UNIFORM)
    er = expected(model, w0, head, UNIFORM, lam, auxiliary=True)
    m, s = model.means(auxiliary=True), model.stds(auxiliary=True)
    correct = float(normal_cdf(float(w0 @ m) / math.sqrt(float(np.sum(w0 * w0 * s * s)))))
    rows.append(_row("y^ER (Eq. 30)", "P(sign z~_i^adv = y)", "high (> 1/2)", _nonrobust(np.sign(adv_er) == yc),
                     er_feature_sign_probability(model, w0, head, lam, 1), ("likely",)))
    rows.append(_row("y^ER (Eq. 30)", "P(sign dl~/dz~_i^adv = y)", "high (> 1/2)",
                     _nonrobust(np.sign(grad_er) == yc), correct, ("likely",),
                     "= the clean auxiliary accuracy of sign(w.z~)"))
    rows.append(_row("y^ER (Eq. 29)", "y E[dl~/dz~_i^adv]", f"> 0 (~ 1/(2d) = {1 / (2 * model.d):.4g})",
                     _nonrobust(yc * grad_er), er.grad_z[1], ("positive",),
                     "the paper's size assumes a saturated sigmoid"))
    rows.append(_row("y^ER (Sec. 2.2 end)", "y E[dl~/dz~_1^adv], w = [0, 1/d, ...]", "= 0 (no robust feature learning)",
                     ya * grad_er[:, 0], er.grad_z[0], ("equal", 0.0), "exactly 0 because w_1 = 0"))
    adv_er1 = attack(za, w1, head, UNIFORM, lam)
    grad_er1, gw_er = gradients(adv_er1, w1, head, UNIFORM)
    er1 = expected(model, w1, head, UNIFORM, lam, auxiliary=True)
    rows.append(_row("y^ER, w_1 > 0 (not in the paper)", "y E[dl~/dz~_1^adv]", "-", ya * grad_er1[:, 0],
                     er1.grad_z[0], (None,), "> 0: y^ER shrinks the robust feature too once w_1 > 0"))

    # The same statements read for the head's weights, w = [w_1, 1/d, ...]: a gradient step
    # moves w by -E[dl/dw], so a negative robust entry grows w_1 and a positive non-robust entry
    # shrinks w_2..w_{d+1}.
    _, gw_pri = gradients(attack(z, w1, 1.0, t_pri, lam), w1, 1.0, t_pri)
    _, gw_lab = gradients(attack(za, w1, head, t_aux, lam), w1, head, t_aux)
    pri1 = expected(model, w1, 1.0, 1.0, lam)
    lab1 = expected(model, w1, head, t_aux_closed, lam, auxiliary=True)
    for name, grads, closed, robust_claim in (
            ("primary, labels", gw_pri, pri1, ("negative", "< 0 (w_1 grows: Lemma 1)")),
            ("auxiliary, labels", gw_lab, lab1, ("negative", "< 0 (w_1 grows: robust feature learning)")),
            ("auxiliary, y^ER", gw_er, er1, ("equal", "= 0 (no robust feature learning)"))):
        claim = (robust_claim[0], 0.0) if robust_claim[0] == "equal" else (robust_claim[0],)
        note = "y^ER's confidence penalty pulls the robust weight down" if "ER" in name else ""
        rows.append(_row(f"weights: {name}", "E[dl/dw_1]", robust_claim[1], grads[:, 0], closed.grad_w[0], claim, note))
        rows.append(_row(f"weights: {name}", "E[dl/dw_i], i >= 2", "> 0 (w_i shrink: non-robust regularisation)",
                         _nonrobust(grads), closed.grad_w[1], ("positive",)))
    return rows
