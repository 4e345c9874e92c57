"""`biamat-engine analyze`: figures and a markdown report from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.console import console

OUTPUT = "Output"
EPILOG = ("Examples: biamat-engine analyze runs/demo/biamat  |  "
          "biamat-engine analyze runs/demo/at runs/demo/biamat --out runs/demo/analysis  |  "
          "biamat-engine analyze runs/c10-at-imnet --groups classes.json")


def analyze_command(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR", help="One or more run directories (`train --out`).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for analysis.md and the PNGs (default: RUN_DIR/analysis for one run, ./analysis for several).",
        rich_help_panel=OUTPUT)] = None,
    groups: Annotated[Optional[Path], typer.Option(
        help="JSON {class_name: group} grouping the auxiliary classes in Table 14 (default: the records' "
             "related/unrelated flags).", rich_help_panel=OUTPUT)] = None,
) -> None:
    """Draw training curves and the routing of auxiliary samples, and write a markdown report.

    Per run: loss terms, held-out clean and robust accuracy and lr per epoch; the share of
    auxiliary samples routed high with omega (the paper's Fig. 3); the per-class high-confidence
    ratio at the last routed epoch, top and bottom 10 and per class group (its Table 14). With
    several runs, one table in the layout of its Table 2 (from each run's eval.json) and the
    curves overlaid. Needs matplotlib (the `analyze` extra)."""
    from engine.analysis.report import write_analysis

    result = write_analysis(runs, out, groups)
    console.print(f"wrote {result.report} and {len(result.figures)} figures in {result.out}")
