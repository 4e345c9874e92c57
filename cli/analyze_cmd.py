"""`biamat-engine analyze`: figures and a markdown report from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.console import console

OUTPUT = "Output"
FIG4 = "Fig. 4: most and least confident auxiliary images"
EPILOG = ("Examples: biamat-engine analyze runs/demo/biamat  |  "
          "biamat-engine analyze runs/demo/at runs/demo/biamat --out runs/demo/analysis  |  "
          "biamat-engine analyze runs/c10-at-imnet --groups classes.json --fig4-limit 50000 "
          "--aux-data data/imagenet32-train.beton")


def analyze_command(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR", help="One or more run directories (`train --out`).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for analysis.md and the PNGs (default: RUN_DIR/analysis for one run, ./analysis for several): "
             "new, empty or analyze's own earlier output, which is replaced whole; never a folder holding "
             "anything else.",
        rich_help_panel=OUTPUT)] = None,
    groups: Annotated[Optional[Path], typer.Option(
        help="JSON {class_name: group} grouping the auxiliary classes in Table 14 (default: the records' "
             "related/unrelated flags).", rich_help_panel=OUTPUT)] = None,
    fig4: Annotated[bool, typer.Option(
        "--fig4/--no-fig4", help="Score the auxiliary images with the run's final model and draw the most and "
                                 "least confident ones.", rich_help_panel=FIG4)] = True,
    aux_data: Annotated[Optional[list[str]], typer.Option(
        "--aux-data", metavar="FILE", show_default=False,
        help="An auxiliary dataset (.beton, .npz or shapes: spec) instead of the one the run's config.toml "
             "records; once per auxiliary dataset, in the run's order.", rich_help_panel=FIG4)] = None,
    fig4_k: Annotated[int, typer.Option(
        "--fig4-k", min=1, help="Images at each end of the ranking.", rich_help_panel=FIG4)] = 10,
    fig4_limit: Annotated[Optional[int], typer.Option(
        "--fig4-limit", min=1, show_default="all",
        help="Score only the first N images: a quick look at a large auxiliary set.", rich_help_panel=FIG4)] = None,
    fig4_class: Annotated[Optional[str], typer.Option(
        "--fig4-class", metavar="NAME", show_default=False,
        help="Rank the images of this auxiliary class only (the paper's figure: \"aircraft carrier\").",
        rich_help_panel=FIG4)] = None,
    device: Annotated[str, typer.Option(
        help="Where the model scores the images: auto (cuda when there is one), cpu, cuda, cuda:N.",
        rich_help_panel=FIG4)] = "auto",
) -> None:
    """Draw training curves and the routing of auxiliary samples, and write a markdown report.

    Per run: loss terms, held-out clean and robust accuracy and lr per epoch; the share of
    auxiliary samples routed high with omega (the paper's Fig. 3); the per-class high-confidence
    ratio at the last routed epoch, top and bottom 10 and per class group (its Table 14). With
    several runs, one table in the layout of its Table 2 (from each run's eval.json) and the
    curves overlaid. Fig. 4: the auxiliary images the final model (model.safetensors, else best.pt)
    is most and least confident on (max softmax of the primary head, the selection's score), with
    their classes and the share of each class group. Needs matplotlib (the `analyze` extra)."""
    from studies.analysis.confidence import Fig4Options
    from studies.analysis.report import write_analysis

    options = Fig4Options(k=fig4_k, limit=fig4_limit, only_class=fig4_class,
                          aux_data=tuple(aux_data or ()), device=device) if fig4 else None
    result = write_analysis(runs, out, groups, options)
    console.print(f"wrote {result.report} and {len(result.figures)} figures in {result.out}")
