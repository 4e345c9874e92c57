"""`theory gaussian`: the statements and the training runs of the Gaussian model, gathered into one
report, and its files: gaussian.json, gaussian.md and gaussian.png (all written atomically)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.outputs import claim_folder, publish_folder
from engine.run_dir import write_json
from kernels.errors import InputError
from studies.analysis.figures import _figure, _save
from studies.theory.gaussian import GaussianModel
from studies.theory.gaussian_statements import Z, Statement, statements
from studies.theory.gaussian_training import MODES, Trajectory, check_schedule, train_expected, train_sampled

JSON_NAME, MD_NAME, FIGURE_NAME = "gaussian.json", "gaussian.md", "gaussian.png"
FIGURE_SIZE = (15.0, 4.0)  # inches: robust weight | non-robust weight | accuracy


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    steps: int = 1000
    """Gradient steps (full batch)."""
    lr: float = 0.005
    """First step size; decays linearly to 0 (studies.theory.gaussian_training.lr_at)."""
    alpha: float = 1.0
    """Weight of the auxiliary loss (Eq. 1)."""
    n_primary: int = 100
    """Primary training samples: few, so that more data can help."""
    n_aux: int = 1000
    """Auxiliary training samples."""

    def __post_init__(self) -> None:
        check_schedule(self.steps, self.lr, self.alpha)
        if self.n_primary < 1 or self.n_aux < 1:
            raise InputError(f"the training sets need at least one sample each; got n_primary={self.n_primary}, "
                             f"n_aux={self.n_aux}")


@dataclass
class GaussianReport:
    model: GaussianModel
    samples: int  # Monte-Carlo samples per statement
    seed: int
    robust_weight: float  # w_1 where the paper assumes w_1 > 0
    training: TrainingSettings
    statements: list[Statement]
    sampled: dict[str, Trajectory]  # mode -> training on the finite sample
    expected: dict[str, Trajectory]  # mode -> training on the closed-form expected gradient

    def to_dict(self, environment: dict) -> dict:
        return {"environment": environment, "model": dataclasses.asdict(self.model),
                "samples": self.samples, "seed": self.seed, "robust_weight": self.robust_weight,
                "tolerance": f"{Z:g} standard errors of the simulated mean",
                "training": dataclasses.asdict(self.training),
                "statements": [s.to_dict() for s in self.statements],
                "trajectories": {kind: {mode: dataclasses.asdict(t) for mode, t in paths.items()}
                                 for kind, paths in (("sampled", self.sampled), ("expected", self.expected))}}


def run_gaussian(model: GaussianModel, samples: int, seed: int, robust_weight: float,
                 training: TrainingSettings) -> GaussianReport:
    """Checks every statement on `samples` draws and trains under each auxiliary mode."""
    if not math.isfinite(robust_weight):
        raise InputError(f"--robust-weight must be a finite number; got {robust_weight}")
    rows = statements(model, samples, seed, robust_weight)
    t = training
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below, once
        sampled = {mode: train_sampled(model, mode, t.n_primary, t.n_aux, t.steps, t.lr, t.alpha, seed + 1)
                   for mode in MODES}
        expected = {mode: train_expected(model, mode, t.steps, t.lr, t.alpha) for mode in MODES}
    # A step size that overflows the weights (--lr 1e308) would print a table of NaN as a result.
    for mode, trajectory in [*sampled.items(), *expected.items()]:
        if not all(math.isfinite(w) for w in trajectory.w_robust + trajectory.w_nonrobust):
            raise InputError(f"the training under {mode!r} diverged (a weight became NaN or inf) with --lr {t.lr}: "
                             "lower --lr (default 0.005)")
    return GaussianReport(model, samples, seed, robust_weight, training, rows, sampled, expected)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def verdict(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def cell(text: str) -> str:
    """Text in a markdown table cell: a bare | would end the cell."""
    return text.replace("|", "\\|")


def checkpoints(steps: int) -> list[int]:
    """The steps the training table shows: the start, a tenth, a third, the end."""
    return sorted({0, steps // 10, steps // 3, steps})


def markdown(report: GaussianReport, environment: dict) -> str:
    m, t = report.model, report.training
    lines = [
        "# The Gaussian model of Section 2.2 (biamat-engine theory gaussian)", "",
        f"Model: d={m.d}, eta={m.eta:g}, u={m.u:g}, v={m.v:g}, gamma={m.gamma:g}, lam={m.lam:g}; "
        f"w_1 = {report.robust_weight:g} where the paper assumes w_1 > 0. "
        f"{report.samples} Monte-Carlo samples per statement, seed {report.seed}; "
        f"tolerance = {Z:g} standard errors. Revision {environment.get('git_revision', 'unknown')}, "
        f"{environment.get('machine', 'unknown machine')}.", "",
        "| source | quantity | paper | closed form | simulated | +- tol | sim = closed | paper holds | note |",
        "|---|---|---|---|---|---|---|---|---|"]
    for s in report.statements:
        lines.append(f"| {cell(s.source)} | {cell(s.quantity)} | {cell(s.paper)} | {fmt(s.closed_form)} | "
                     f"{fmt(s.simulated)} | {fmt(s.tolerance)} | {verdict(s.agrees)} | {verdict(s.holds)} | "
                     f"{cell(s.note)} |")
    lines += ["", f"## Adversarial training of w (full batch, {t.steps} steps, lr {t.lr:g} decaying linearly, "
              f"alpha {t.alpha:g}; {t.n_primary} primary and {t.n_aux} auxiliary samples, and the infinite batch)", "",
              "Starting from the paper's w = [0, 1/d, ...]. Robust accuracy is the closed form on the primary "
              f"distribution under an l-inf attack of radius lam = {m.lam:g}.", "",
              "| mode | step | w_1 (sampled) | mean w_i (sampled) | robust acc (sampled) | w_1 (expected) | "
              "mean w_i (expected) | robust acc (expected) |", "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        a, b = report.sampled[mode], report.expected[mode]
        for k in checkpoints(t.steps):
            lines.append(f"| {mode} | {k} | {fmt(a.w_robust[k])} | {fmt(a.w_nonrobust[k])} | "
                         f"{fmt(a.robust_accuracy[k])} | {fmt(b.w_robust[k])} | {fmt(b.w_nonrobust[k])} | "
                         f"{fmt(b.robust_accuracy[k])} |")
    lines += ["", f"![weights and robust accuracy over training]({FIGURE_NAME})", ""]
    return "\n".join(lines)


def figure(report: GaussianReport, path: Path) -> Path:
    """Robust weight, mean non-robust weight and robust accuracy per step, one colour per
    auxiliary mode; solid the finite sample, dashed the infinite batch."""
    fig = _figure(FIGURE_SIZE)
    axes = fig.subplots(1, 3)
    panels = (("w_robust", "robust weight w_1"), ("w_nonrobust", "mean non-robust weight w_i"),
              ("robust_accuracy", "robust accuracy (primary)"))
    for i, mode in enumerate(MODES):
        # The infinite batch thin: its non-robust weights are all equal and cross 0 together, so
        # the kink of lam*||w||_1 makes it zigzag there.
        for kind, paths, style, width in (("sampled", report.sampled, "-", 1.5),
                                          ("expected", report.expected, "--", 0.7)):
            for ax, (key, _) in zip(axes, panels):
                values = getattr(paths[mode], key)
                ax.plot(range(len(values)), values, style, color=f"C{i}", lw=width, label=f"{mode} ({kind})")
    for ax, (_, title) in zip(axes, panels):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 1.02)
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def write_gaussian(report: GaussianReport, out: Path, environment: dict) -> list[Path]:
    """gaussian.json, gaussian.md and gaussian.png in `out`, which appear together (engine/outputs.py).
    The simulation is recomputed from its settings, so `theory gaussian` replaces its own earlier
    folder; never a folder holding anything else. The figure is drawn first: without matplotlib
    nothing is written."""
    out = Path(out)
    claim_folder(out, "theory gaussian", overwrite=True)

    def fill(folder: Path) -> None:
        figure(report, folder / FIGURE_NAME)
        write_json(folder / JSON_NAME, report.to_dict(environment))
        (folder / MD_NAME).write_text(markdown(report, environment))

    publish_folder(out, "theory gaussian", fill)
    return [out / JSON_NAME, out / MD_NAME, out / FIGURE_NAME]
