"""`biamat-engine prepare`: one dataset split in its published format -> NAME.beton + NAME.beton.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cli.app import app

_EPILOG = (
    "Examples:\n\n"
    "  biamat-engine prepare cifar10 data/cifar --download data/cifar10-train.beton\n\n"
    "  biamat-engine prepare cifar100 data/cifar-100-python.tar.gz data/cifar100-test.beton --split test\n\n"
    "  biamat-engine prepare imgnet100 data/Imagenet32 data/imgnet100.beton --size 32 --seed 0\n\n"
    "  biamat-engine prepare places365 data/places365_standard data/places365-32.beton --workers 8\n\n"
    "  biamat-engine prepare shapes primary data/shapes-train.beton"
)


@app.command("prepare", epilog=_EPILOG)
def prepare(
    format: str = typer.Argument(..., help="Dataset format: cifar10, cifar100, svhn, imagenet32, imagenet64, "
                                 "imgnet100, imgnet900, places365, imagefolder, shapes."),
    source: str = typer.Argument(..., help="Archive, file or folder as published (for shapes: primary or aux)."),
    out: Path = typer.Argument(..., help="The .beton to write; its manifest goes to OUT.json."),
    split: str = typer.Option("train", help="train or test (svhn also: extra)."),
    size: Optional[int] = typer.Option(None, help="Image side, 32 or 64 where the format offers both."),
    download: bool = typer.Option(False, "--download", help="Fetch CIFAR/SVHN into SOURCE and verify the MD5."),
    coarse: bool = typer.Option(False, "--coarse", help="CIFAR-100: the 20 coarse labels instead of 100 fine."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Image folders: skip unreadable images and list them."),
    workers: int = typer.Option(1, min=1, help="Processes decoding and resizing images."),
    seed: int = typer.Option(0, help="imgnet100/imgnet900 class draw; shapes generator seed."),
) -> None:
    """Converts one split of a dataset, as its publishers ship it, into an FFCV .beton file and a
    JSON manifest (classes, counts, checksums). Bad input exits non-zero with a message naming the
    file; nothing half-written is ever left behind."""
    from loaders.sources import SourceError, read_source

    err = Console(stderr=True)
    if out.suffix != ".beton":
        err.print(f"[red]{out}: the output must end in .beton[/red]")
        raise typer.Exit(2)
    try:
        data = read_source(format, source, split, size, download=download, coarse=coarse,
                           skip_bad=skip_bad, workers=workers, seed=seed)
        manifest = _write(out, data, format, split, source)
    except (SourceError, FileNotFoundError, ImportError) as error:
        err.print(f"[red]prepare failed:[/red] {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted: {out} was not written[/yellow]")
        raise typer.Exit(130) from None
    console = Console()
    console.print(f"wrote {out}: {manifest['count']} images {manifest['image_size']}x{manifest['image_size']}, "
                  f"{manifest['num_classes']} classes ({manifest['name']})")
    skipped = manifest.get("meta", {}).get("skipped") or []
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} unreadable images[/yellow] (listed in {out}.json):")
        for path in skipped[:20]:
            console.print(f"  {path}")


def _write(out: Path, data, format: str, split: str, source: str) -> dict:
    from loaders.beton import write_beton
    from loaders.sources import ChunkedSource

    total = data.count if isinstance(data, ChunkedSource) else len(data)
    if not sys.stderr.isatty():
        return write_beton(out, data, format=format, split=split, source=str(source))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(f"{data.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("write", total=total)
        return write_beton(out, data, format=format, split=split, source=str(source),
                           progress=lambda n: progress.advance(task, n))
