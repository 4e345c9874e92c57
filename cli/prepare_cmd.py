"""`biamat-engine prepare`: one dataset split in its published format -> NAME.beton + NAME.beton.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.console import console, err_console

EPILOG = (
    "Examples:\n\n"
    "  biamat-engine prepare cifar10 data/cifar --download data/cifar10-train.beton\n\n"
    "  biamat-engine prepare cifar100 data/cifar-100-python.tar.gz data/cifar100-test.beton --split test\n\n"
    "  biamat-engine prepare imgnet100 data/Imagenet32 data/imgnet100.beton --size 32 --seed 0\n\n"
    "  biamat-engine prepare places365 data/places365_standard data/places365-32.beton --workers 8\n\n"
    "  biamat-engine prepare shapes primary data/shapes-train.beton\n\n"
    "  biamat-engine prepare shapes primary data/shapes-hard.beton --n 800 --difficulty 2 --classes 16\n\n"
    "  biamat-engine prepare cifar10 data/cifar data/cifar.beton --parts 25000,12500,12500   "
    "(writes data/cifar-A.beton, -B, -C)\n\n"
    "  biamat-engine prepare cifar10 data/cifar data/cifar-C-noise.beton --parts 25000,12500,12500 --part C "
    "--uniform-noise 64\n\n"
    "  biamat-engine prepare concat data/cifar-A.beton,data/cifar-B.beton data/cifar-AB.beton\n\n"
    "  biamat-engine prepare fashion-mnist data/fmnist-test.beton --split test   "
    "(from /usr/share/datasets/fashion-mnist)\n\n"
    "  biamat-engine prepare fashion-mnist data/fmnist-024.beton --classes 0,2,4 --n-per-class 500 --seed 1\n\n"
    "  biamat-engine prepare idx train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz data/mnist-train.beton"
)


DATASET, READING, SHAPES, DERIVED = "Dataset", "Reading", "Shapes generator", "Parts and noise (Appendix B)"
SUBSET = "Subset of classes and images"


def prepare_command(
    format: Annotated[str, typer.Argument(help="Dataset format: cifar10, cifar100, svhn, imagenet32, imagenet64, "
                                          "imgnet100, imgnet900, places365, imagefolder, shapes, idx, "
                                          "fashion-mnist, concat (prepared .beton files joined).")],
    paths: Annotated[list[str], typer.Argument(
        metavar="SOURCE... OUT.beton",
        help="SOURCE: archive, file or folder as published (shapes: primary or aux; idx: the images file "
             "and the labels file; fashion-mnist: the folder, default Debian's package folder). OUT: the "
             ".beton to write; its manifest goes to OUT.json.")],
    split: Annotated[str, typer.Option(help="train or test (svhn also: extra).", rich_help_panel=DATASET)] = "train",
    size: Annotated[Optional[int], typer.Option(
        help="Image side, 32 or 64 where the format offers both.", rich_help_panel=DATASET)] = None,
    coarse: Annotated[bool, typer.Option(
        "--coarse", help="CIFAR-100: the 20 coarse labels instead of 100 fine.", rich_help_panel=DATASET)] = False,
    seed: Annotated[int, typer.Option(
        help="imgnet100/imgnet900 class draw; shapes generator seed; the --n-per-class, --parts and "
             "--uniform-noise draws (independent streams of it).", rich_help_panel=DATASET)] = 0,
    download: Annotated[bool, typer.Option(
        "--download", help="Fetch CIFAR/SVHN into SOURCE and verify the MD5.", rich_help_panel=READING)] = False,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Image folders: skip unreadable images and list them.", rich_help_panel=READING)] = False,
    workers: Annotated[int, typer.Option(
        min=1, help="Processes decoding and resizing images.", rich_help_panel=READING)] = 1,
    n: Annotated[Optional[int], typer.Option(
        "--n", min=0, help="shapes: images to generate (default 5000 train, 1000 test).",
        rich_help_panel=SHAPES)] = None,
    difficulty: Annotated[Optional[int], typer.Option(
        min=0, max=3, help="shapes: 0 plain .. 3 clutter, noise and train-only colour/texture shortcuts.",
        rich_help_panel=SHAPES)] = None,
    classes: Annotated[Optional[str], typer.Option(
        help="Keep these classes, relabelled 0..k-1 in this order (e.g. 0,2,4; the source's ids and names "
             "stay in the manifest). shapes: a single number is the generator's primary class count "
             "(2-16; aux: as many related + 10 unrelated).", rich_help_panel=SUBSET)] = None,
    n_per_class: Annotated[Optional[int], typer.Option(
        min=1, help="Keep N images of each class, drawn with --seed.", rich_help_panel=SUBSET)] = None,
    groups: Annotated[Optional[str], typer.Option(
        help="shapes aux: all, related (the primary's shapes in another domain) or unrelated (textures) classes.",
        rich_help_panel=SHAPES)] = None,
    grey: Annotated[bool, typer.Option(
        "--grey", help="Turn every image to grey (BT.601 luma) in all three channels, as grey sources "
                       "(idx, fashion-mnist) are stored.", rich_help_panel=DERIVED)] = False,
    parts: Annotated[Optional[str], typer.Option(
        help="Split into disjoint class-stratified parts of these sizes (e.g. 25000,12500,12500), drawn "
             "with --seed; writes OUT-A.beton, OUT-B.beton, ... (or the one --part at OUT).",
        rich_help_panel=DERIVED)] = None,
    part: Annotated[Optional[str], typer.Option(
        help="With --parts: write only this part (A, B, ...) to OUT.", rich_help_panel=DERIVED)] = None,
    uniform_noise: Annotated[Optional[float], typer.Option(
        help="Add noise uniform in [-AMP, AMP] pixel levels (0-255 images) to every pixel, rounded and "
             "clipped; drawn with --seed.", metavar="AMP", rich_help_panel=DERIVED)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace prepare's own earlier OUT (never a file prepare did not write, never an input).",
        rich_help_panel=READING)] = False,
) -> None:
    """Convert one split of a published dataset into a .beton file and its manifest.

    The dataset as its publishers ship it becomes an FFCV .beton file and a JSON manifest
    (classes, counts, checksums). Bad input exits 1 with a message naming the file; nothing
    half-written is ever left behind."""
    from engine.outputs import claim_beton
    from loaders.prepare import prepare
    from loaders.sources.derive import parse_class_ids, part_path

    source, out = _source_and_out(format, paths)
    if out.suffix != ".beton":
        raise typer.BadParameter(f"{out}: the output must end in .beton", param_hint="OUT")
    if part is not None and parts is None:
        raise typer.BadParameter("--part picks one of the --parts: give --parts SIZES too", param_hint="--part")
    shape_classes = format == "shapes" and classes is not None and classes.strip().isdigit()
    knobs = {k: v for k, v in (("n", n), ("difficulty", difficulty), ("classes", int(classes) if shape_classes else None),
                               ("groups", groups)) if v is not None}
    keep = parse_class_ids(classes) if classes is not None and not shape_classes else None
    sizes = _checked_options(parts, part, uniform_noise)
    targets = [out] if sizes is None or part is not None else [part_path(out, i) for i in range(len(sizes))]
    for target in targets:  # before any data is read: a refused output costs nothing
        claim_beton(target, "prepare", overwrite=overwrite,
                    inputs=source.split(",") if isinstance(source, str) else source)

    def report(out_path: Path, manifest: dict) -> None:
        console.print(f"wrote {out_path}: {manifest['count']} images {manifest['image_size']}x"
                      f"{manifest['image_size']}, {manifest['num_classes']} classes ({manifest['name']})")
        skipped = manifest.get("meta", {}).get("skipped") or []
        if skipped:
            err_console.print(f"[yellow]warning: skipped {len(skipped)} unreadable images[/yellow] "
                              f"(listed in {out_path}.json):")
            for path in skipped[:20]:
                err_console.print(f"  {path}")

    prepare(format, source, out, split=split, size=size, seed=seed, shapes=knobs, download=download, coarse=coarse,
            skip_bad=skip_bad, workers=workers, parts=sizes, part=part, uniform_noise=uniform_noise, classes=keep,
            n_per_class=n_per_class, grey=grey, write=_write, on_written=report)


def _source_and_out(format: str, paths: list[str]) -> tuple[str | tuple[str, ...], Path]:
    """SOURCE (one path, or a tuple for the formats that read several) and OUT from the
    positional arguments; the format's default SOURCE where it has one and it is left out."""
    from loaders.sources import SOURCES

    spec = SOURCES.get(format)
    if spec is None:  # read_source names the formats
        return paths[0], Path(paths[-1])
    sources = paths[:-1]
    if not sources and spec.default_source is not None:
        sources = [spec.default_source]
    if len(sources) != spec.paths:
        expected = " ".join(["SOURCE"] * spec.paths)
        raise typer.BadParameter(f"{format} takes {expected} OUT.beton, got {len(paths)} path(s): "
                                 f"{' '.join(paths)}", param_hint="SOURCE... OUT.beton")
    return (sources[0] if spec.paths == 1 else tuple(sources)), Path(paths[-1])


def _checked_options(parts: str | None, part: str | None, noise: float | None) -> list[int] | None:
    """The --parts sizes, with --part and --uniform-noise checked before any data is read."""
    from loaders.sources.derive import check_amplitude, parse_sizes, part_index

    if noise is not None:
        check_amplitude(noise)
    if parts is None:
        return None
    sizes = parse_sizes(parts)
    if part is not None:
        part_index(part, len(sizes))
    return sizes


def _write(out: Path, data, format: str, split: str, source: str) -> dict:
    from engine.outputs import record_beton

    manifest = _write_beton(out, data, format, split, source)
    record_beton(out, "prepare")
    return manifest


def _write_beton(out: Path, data, format: str, split: str, source: str) -> dict:
    from loaders.beton import write_beton
    from loaders.prepare import write_plain
    from loaders.sources import ChunkedSource

    total = data.count if isinstance(data, ChunkedSource) else len(data)
    if not sys.stderr.isatty():
        return write_plain(out, data, format, split, source)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(f"{data.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("write", total=total)
        return write_beton(out, data, format=format, split=split, source=str(source),
                           progress=lambda n: progress.advance(task, n))
