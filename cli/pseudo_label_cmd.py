"""`biamat-engine pseudo-label`: a primary classifier labels auxiliary data (Carmon et al., paper Table 3 / 7)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.console import console, err_console
from cli.errors import UsageError
from cli.options import Overwrite, RunDevice, require_device

EPILOG = (
    "Examples (the paper's ImageNet-500k: the top 50k per CIFAR-10 class, 5k per CIFAR-100 class):\n\n"
    "  biamat-engine pseudo-label runs/c10-standard data/imagenet32-train.beton "
    "data/imagenet32-pseudo-cifar10-500k.beton --top-k-per-class 50000\n\n"
    "  biamat-engine pseudo-label runs/c10-standard data/places365-32-train.beton "
    "data/places365-32-pseudo-cifar10.beton --all\n\n"
    "Then train on it: biamat-engine train --preset cifar10-trades-pseudo-imagenet500k --out runs/c10-rst"
)

SELECTION, RUN = "Selection", "Run"


def pseudo_label_command(
    model: Annotated[Path, typer.Argument(
        help="The primary classifier: RUN_DIR, MODEL.safetensors (model.json beside it) or CKPT.pt.")],
    aux: Annotated[Path, typer.Argument(help="The auxiliary .beton to label.")],
    out: Annotated[Path, typer.Argument(help="The pseudo-labelled .beton to write; its manifest goes to OUT.json.")],
    top_k_per_class: Annotated[Optional[int], typer.Option(
        "--top-k-per-class", min=1, metavar="K", rich_help_panel=SELECTION,
        help="Keep the K most confident images per predicted class (ImageNet-500k: 50000 for CIFAR-10).")] = None,
    all_: Annotated[bool, typer.Option(
        "--all", help="Keep every image with its predicted class.", rich_help_panel=SELECTION)] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per scoring batch.", rich_help_panel=RUN)] = 512,
    device: RunDevice = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Label auxiliary data with a primary classifier, keeping the most confident images per class.

    Every image of AUX is scored (eval mode, no gradients); its predicted class becomes its label
    and its max softmax its confidence. The K most confident images of each predicted class (or
    all with --all) are written to OUT with the model's class names; the manifest records the
    source, the model, K and the counts kept. Train on OUT with method.aux_mode = pseudo."""
    if (top_k_per_class is None) == (not all_):
        raise UsageError("give --top-k-per-class K (the paper's ImageNet-500k: 50000 per CIFAR-10 class) "
                         "or --all, exactly one of them")
    if out.suffix != ".beton":
        raise typer.BadParameter(f"{out}: the output must end in .beton", param_hint="OUT")
    require_device(device)
    from engine.pseudo_label import pseudo_label

    run = dict(top_k=top_k_per_class, batch_size=batch_size, device=device, overwrite=overwrite)
    if sys.stderr.isatty():
        result = _with_progress(model, aux, out, run)
    else:
        result = pseudo_label(model, aux, out, **run)
    manifest = result.manifest
    size = manifest["image_size"]
    console.print(f"wrote {out}: {manifest['count']} of {result.scored} images {size}x{size}, "
                  f"{manifest['num_classes']} classes (kept per class: {', '.join(map(str, result.kept_per_class))})")
    if result.short_classes:
        err_console.print(f"[yellow]warning:[/yellow] {len(result.short_classes)} classes kept fewer than "
                          f"{top_k_per_class} images (fewer were predicted as them): "
                          f"{', '.join(result.short_classes[:10])}")


def _with_progress(model: Path, aux: Path, out: Path, run: dict):
    """pseudo_label under a rich progress bar per pass (scoring, writing) on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.pseudo_label import pseudo_label

    tasks: dict[str, int] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True) as progress:
        def advance(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"{phase} {(aux if phase == 'score' else out).name}", total=total)
            progress.advance(tasks[phase], done)

        return pseudo_label(model, aux, out, progress=advance, **run)
