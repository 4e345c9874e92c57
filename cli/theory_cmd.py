"""`biamat-engine theory gaussian`: the paper's Section 2.2 Gaussian model, simulated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.console import console

MODEL = "Model (the paper's Eq. 4)"
SIMULATION = "Simulation"
OUTPUT = "Output"
EPILOG = ("Examples: biamat-engine theory gaussian  |  "
          "biamat-engine theory gaussian --gamma -0.5 --v 2 --samples 100000 --out runs/theory")


def _statement_table(report) -> Table:
    from studies.theory.gaussian_report import fmt, verdict

    table = Table(title="Section 2.2 and Appendix A: simulated vs closed form (y-aligned, y = +1)")
    for column, justify in (("source", "left"), ("quantity", "left"), ("paper", "left"), ("closed form", "right"),
                            ("simulated", "right"), ("+- tol", "right"), ("sim = closed", "center"),
                            ("holds", "center")):
        table.add_column(column, justify=justify)
    for s in report.statements:
        table.add_row(escape(s.source), escape(s.quantity), escape(s.paper), fmt(s.closed_form), fmt(s.simulated), fmt(s.tolerance),
                      verdict(s.agrees), verdict(s.holds))
    return table


def _training_table(report) -> Table:
    from studies.theory.gaussian_report import fmt

    steps = report.training.steps
    table = Table(title=f"adversarial training of w, {steps} steps: sampled | expected (infinite batch)")
    for column in ("mode", "w_1", "mean w_i", f"robust acc @ {steps // 10}", "robust acc"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, a in report.sampled.items():
        b = report.expected[mode]
        table.add_row(mode, *(f"{fmt(getattr(a, key)[k])} | {fmt(getattr(b, key)[k])}" for key, k in (
            ("w_robust", -1), ("w_nonrobust", -1), ("robust_accuracy", steps // 10), ("robust_accuracy", -1))))
    return table


def gaussian_command(
    d: Annotated[int, typer.Option(min=1, help="Number of non-robust features.", rich_help_panel=MODEL)] = 100,
    eta: Annotated[float, typer.Option(help="Mean of a non-robust feature times y (0 < eta < lam).",
                                       rich_help_panel=MODEL)] = 0.3,
    u: Annotated[float, typer.Option(help="Standard deviation of the primary robust feature.",
                                     rich_help_panel=MODEL)] = 1.0,
    v: Annotated[float, typer.Option(help="Standard deviation of the auxiliary robust feature.",
                                     rich_help_panel=MODEL)] = 1.0,
    gamma: Annotated[float, typer.Option(help="Correlation between the tasks, in [-1, 1], not 0.",
                                         rich_help_panel=MODEL)] = 1.0,
    lam: Annotated[float, typer.Option(help="The adversary's l-inf radius in feature space (eta < lam < 1).",
                                       rich_help_panel=MODEL)] = 0.5,
    robust_weight: Annotated[float, typer.Option(help="w_1 where the paper assumes a positive robust weight.",
                                                 rich_help_panel=MODEL)] = 0.1,
    samples: Annotated[int, typer.Option(min=2, help="Monte-Carlo samples per statement.",
                                         rich_help_panel=SIMULATION)] = 20000,
    seed: Annotated[int, typer.Option(help="Seed of every draw.", rich_help_panel=SIMULATION)] = 0,
    steps: Annotated[int, typer.Option(min=0, help="Training steps (full batch).", rich_help_panel=SIMULATION)] = 1000,
    lr: Annotated[float, typer.Option(help="First step size (decays linearly to 0).",
                                      rich_help_panel=SIMULATION)] = 0.005,
    alpha: Annotated[float, typer.Option(help="Weight of the auxiliary loss (Eq. 1).",
                                         rich_help_panel=SIMULATION)] = 1.0,
    train_primary: Annotated[int, typer.Option(min=1, help="Primary training samples.",
                                               rich_help_panel=SIMULATION)] = 100,
    train_aux: Annotated[int, typer.Option(min=1, help="Auxiliary training samples.",
                                           rich_help_panel=SIMULATION)] = 1000,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for gaussian.md, gaussian.json and gaussian.png (needs matplotlib, the analyze extra): new, "
             "empty or this command's own earlier output, which is replaced whole; never a folder holding "
             "anything else.",
        rich_help_panel=OUTPUT)] = None,
) -> None:
    """Simulate the binary Gaussian model of the paper's Section 2.2 and Appendix A.

    Checks each of its statements (Lemma 2, Theorems 1-6, the y^ER equations 26-30, and their
    reading for the linear head's robust and non-robust weights) on samples against the closed
    form, within 4 standard errors, and says whether the paper's claim holds in simulation. Then
    trains the linear classifier adversarially on primary data plus auxiliary data under each
    target (none, labels, uniform = y^ER), on a finite sample and on the expected gradient."""
    import torch

    from benchmarks.common import git_revision
    from engine.runtime import device_name
    from studies.theory.gaussian import GaussianModel
    from studies.theory.gaussian_report import TrainingSettings, run_gaussian, write_gaussian

    model = GaussianModel(d=d, eta=eta, u=u, v=v, gamma=gamma, lam=lam)
    training = TrainingSettings(steps=steps, lr=lr, alpha=alpha, n_primary=train_primary, n_aux=train_aux)
    report = run_gaussian(model, samples, seed, robust_weight, training)
    console.print(_statement_table(report))
    console.print(_training_table(report))
    if out is not None:
        environment = {"git_revision": git_revision(), "machine": device_name(torch.device("cpu"))}
        paths = write_gaussian(report, out, environment)
        console.print("wrote " + ", ".join(str(p) for p in paths))
