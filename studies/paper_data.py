"""The .beton files the paper-scale presets read, each as the data step that writes it
(studies/data_steps.py: format, split and size as cli/prepare_cmd.py and loaders/sources name
them), OUT its bare name until placed in a data folder, with its size as published.

SOURCE folders are written as RAW/...: the dataset as its publishers ship it (CIFAR and SVHN
can be fetched with --download; ImageNet and Places365 come from their sites, see
`biamat-engine prepare --help`). Files made from other files (Table 5's parts of CIFAR-10 and
their unions, Table 3/7's pseudo-labelled ImageNet, Table 6's robust datasets) name those inputs
under the same data folder (`{data}`), and the runs they need as the presets that train them.
"""

from __future__ import annotations

from pathlib import Path

from studies.data_steps import DataStep

_PART_SIZES = {"A": 25_000, "B": 12_500, "C": 12_500}
_PART_FILES = {"A": "cifar-A", "B": "cifar-B", "C": "cifar-C-noise"}


def _part(name: str, noise: tuple[tuple[str, object], ...] = ()) -> DataStep:
    """Table 5: one part of the seeded, class-stratified 25000/12500/12500 split of CIFAR-10."""
    return DataStep("prepare", ("cifar10", "RAW/cifar10"), Path(f"{_PART_FILES[name]}.beton"),
                    (("parts", "25000,12500,12500"), ("part", name), ("seed", 0), *noise, ("download", True)),
                    images=_PART_SIZES[name])


def _union(*names: str) -> DataStep:
    """Table 5: cifar-A merged with extra parts into one training set."""
    return DataStep("prepare", ("concat", ",".join(f"{{data}}/{_PART_FILES[n]}.beton" for n in names)),
                    Path(f"cifar-{''.join(names)}.beton"), images=sum(_PART_SIZES[n] for n in names))


# ImageNet's 1,281,167 training images: ImgNet100 holds about a tenth of them (the classes are a
# seeded draw of 100 of the 1000, each with 732-1300 images), ImgNet900 the rest.
_PREPARED = (
    DataStep("prepare", ("cifar10", "RAW/cifar10"), Path("cifar10-train.beton"), (("download", True),), images=50_000),
    DataStep("prepare", ("cifar10", "RAW/cifar10"), Path("cifar10-test.beton"),
             (("split", "test"), ("download", True)), images=10_000),
    DataStep("prepare", ("cifar100", "RAW/cifar100"), Path("cifar100-train.beton"), (("download", True),),
             images=50_000),
    DataStep("prepare", ("cifar100", "RAW/cifar100"), Path("cifar100-test.beton"),
             (("split", "test"), ("download", True)), images=10_000),
    DataStep("prepare", ("svhn", "RAW/svhn"), Path("svhn-train.beton"), (("download", True),), images=73_257),
    DataStep("prepare", ("imagenet32", "RAW/Imagenet32_train"), Path("imagenet32-train.beton"), images=1_281_167),
    DataStep("prepare", ("imagenet32", "RAW/Imagenet32_val"), Path("imagenet32-test.beton"), (("split", "test"),),
             images=50_000),
    DataStep("prepare", ("places365", "RAW/places365_standard"), Path("places365-32-train.beton"),
             (("size", 32), ("workers", 8)), images=1_803_460),
    DataStep("prepare", ("places365", "RAW/places365_standard"), Path("places365-64-train.beton"),
             (("size", 64), ("workers", 8)), images=1_803_460),
    DataStep("prepare", ("imgnet100", "RAW/Imagenet64_train"), Path("imgnet100-train.beton"),
             (("size", 64), ("seed", 0)), images=128_000),
    DataStep("prepare", ("imgnet100", "RAW/Imagenet64_val"), Path("imgnet100-test.beton"),
             (("split", "test"), ("size", 64), ("seed", 0)), images=5_000),
    DataStep("prepare", ("imgnet900", "RAW/Imagenet64_train"), Path("imgnet900-train.beton"),
             (("size", 64), ("seed", 0)), images=1_153_000),
    # Appendix B, Table 5 (cifar-C carries uniform noise of 64 pixel levels: cifar-a-standard.toml)
    _part("A"), _part("B"), _part("C", (("uniform-noise", 64),)),
    _union("A", "B"), _union("A", "C"), _union("A", "B", "C"),
)
_CLASSES = {"cifar10": 10, "cifar100": 100}


def _pseudo(primary: str, source: str, thousands: int | None) -> DataStep:
    """Tables 3 and 7 (Carmon et al.): the auxiliary training set `source` pseudo-labelled by a
    standardly trained classifier of `primary`'s classes (its preset's run), every image (--all)
    or the `thousands`k most confident, as many per class."""
    name = f"{source}-pseudo-{primary}-{f'{thousands}k' if thousands else 'all'}.beton"
    if thousands:
        per_class = thousands * 1000 // _CLASSES[primary]
        options, images = (("top-k-per-class", per_class),), thousands * 1000
    else:
        options, images = (("all", True),), _BY_NAME[f"{source}-train.beton"].images
    return DataStep("pseudo-label", (f"runs/{primary}-standard", f"{{data}}/{source}-train.beton"), Path(name), options,
                    images=images)


_BY_NAME = {step.out.name: step for step in _PREPARED}
# Table 3 pseudo-labels every image of CIFAR-100, Places365 and ImageNet for CIFAR-10; Table 7
# also the top 500k, 250k and 100k of ImageNet, and the same for CIFAR-100 (the presets read 500k).
_PSEUDO_LABELLED = tuple(
    _pseudo(primary, source, thousands)
    for primary in _CLASSES
    for source, thousands in [*((s, None) for s in ("cifar100", "places365-32", "imagenet32") if s != primary),
                              *(("imagenet32", k) for k in (500, 250, 100))])
# Appendix C, Table 6: the robust datasets of the AT and AT+BiaMAT models (their presets' runs).
_ROBUST = (
    DataStep("robustify", ("runs/cifar10-at", "{data}/cifar10-train.beton"), Path("c10-robust-at.beton"),
             images=50_000),
    DataStep("robustify", ("runs/cifar10-at-biamat-imagenet", "{data}/cifar10-train.beton"),
             Path("c10-robust-biamat.beton"), images=50_000),
)

PAPER_FILES: dict[str, DataStep] = {step.out.name: step for step in (*_PREPARED, *_PSEUDO_LABELLED, *_ROBUST)}
"""File name -> the step writing it, OUT that name and `{data}` the folder it is placed in (DataStep.at)."""


def prepare_command(path: str | Path) -> str:
    """The shell command that writes `path`, or a pointer to `prepare --help` for a file this
    table does not know."""
    recipe = PAPER_FILES.get(Path(path).name)
    if recipe is None:
        return f"(no recipe for {Path(path).name}: see `biamat-engine prepare --help`)"
    return recipe.at(Path(path).parent).command_line()


def published_images(path: str | Path) -> int | None:
    recipe = PAPER_FILES.get(Path(path).name)
    return recipe.images if recipe else None
