"""`biamat-engine robustify`: the robust dataset of a trained model (the paper's Appendix C)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.console import console, err_console
from cli.options import Overwrite, RunDevice, require_device

EPILOG = (
    "Example (Ilyas et al.'s settings, then standard training on the result):\n\n"
    "  biamat-engine robustify runs/at data/cifar10-train.beton data/cifar10-robust-at.beton "
    "--steps 1000 --step-size 0.1\n\n"
    "An interrupted run continues when rerun with the same arguments (finished chunks are kept in "
    "OUT.parts/).\n\n"
    "Quick look: biamat-engine robustify runs/demo/at/model.safetensors runs/demo/data/shapes-train.beton "
    "runs/robust.beton --steps 20 --limit 200"
)

OPTIMISATION, RUN = "Optimisation", "Run"


def _positive(value: float) -> float:
    if not 0 < value < float("inf"):
        raise typer.BadParameter(f"{value} must be > 0 and finite: an L2 step length")
    return value


def robustify_command(
    model: Annotated[Path, typer.Argument(help="RUN_DIR, MODEL.safetensors (with model.json beside it) or CKPT.pt.")],
    data: Annotated[Path, typer.Argument(help="The model's training set, DATA.beton: targets and start images.")],
    out: Annotated[Path, typer.Argument(help="The robust .beton to write; its manifest goes to OUT.json.")],
    steps: Annotated[int, typer.Option(min=1, help="Gradient steps per image.", rich_help_panel=OPTIMISATION)] = 1000,
    step_size: Annotated[float, typer.Option(
        callback=_positive, help="L2 length of every step (images in [0, 1]).",
        rich_help_panel=OPTIMISATION)] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the start-image draw.", rich_help_panel=OPTIMISATION)] = 0,
    limit: Annotated[Optional[int], typer.Option(
        min=1, help="Robustify only the first N images of DATA.", rich_help_panel=OPTIMISATION)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images optimised together.", rich_help_panel=RUN)] = 256,
    chunk_size: Annotated[int, typer.Option(
        min=1, help="Images per saved chunk: the most an interruption loses.", rich_help_panel=RUN)] = 1000,
    device: RunDevice = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Build the robust dataset of a trained model (Ilyas et al. 2019; the paper's Appendix C).

    For each image x of DATA, a random other image of DATA is moved by normalised L2 gradient
    descent until the model's penultimate features match those of x, and is written with x's
    label. Train a model from scratch on OUT (data.primary) to compare models' robust features
    (the paper's Table 6)."""
    from engine.robustify import robustify

    if out.suffix != ".beton":
        raise typer.BadParameter(f"{out}: the output must end in .beton", param_hint="OUT")
    require_device(device)
    options = dict(steps=steps, step_size=step_size, batch_size=batch_size, chunk_size=chunk_size, seed=seed,
                   device=device, limit=limit, overwrite=overwrite)
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn("robustify"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("robustify", total=None)
            manifest = robustify(model, data, out, **options,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        manifest = robustify(model, data, out, **options)
    facts = manifest["meta"]["robustify"]
    console.print(f"wrote {out}: {manifest['count']} images {manifest['image_size']}x{manifest['image_size']}, "
                  f"{manifest['num_classes']} classes; mean feature distance {facts['mean_start_distance']:.4g} "
                  f"at the start -> {facts['mean_written_distance']:.4g} written")
