"""The .beton files the paper-scale presets read, and the `biamat-engine prepare` command that
writes each one (format, split and size as cli/prepare_cmd.py and loaders/sources name them).

SOURCE folders are written as RAW/...: the dataset as its publishers ship it (CIFAR and SVHN
can be fetched with --download; ImageNet and Places365 come from their sites, see
`biamat-engine prepare --help`). Files made from other files (Table 5's parts of CIFAR-10 and
their unions, Table 3/7's pseudo-labelled ImageNet, Table 6's robust datasets) name those inputs
under the same data folder (`{data}`), and the runs they need as the presets that train them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studies.data_steps import DataStep


@dataclass(frozen=True)
class PaperFile:
    """The data step that writes a paper-scale file (studies/data_steps.py), OUT and `{data}`
    left to the folder it is wanted in, and the file's size as published."""

    args: tuple[str, ...]
    """The command's arguments before OUT: (FORMAT, SOURCE) for `prepare`, (MODEL, DATA) for
    `pseudo-label` and `robustify`; `{data}` stands for the folder OUT is in."""
    options: tuple[tuple[str, object], ...]
    """The command's options after OUT, as DataStep holds them: (option, value), value True a flag."""
    images: int
    """Images in the split as published (for the plan's estimate when the file is not there yet)."""
    command: str = "prepare"
    """The biamat-engine command that writes the file."""

    def step(self, path: str | Path) -> DataStep:
        """The step writing this file at `path`."""
        folder = str(Path(path).parent)
        return DataStep(self.command, tuple(a.replace("{data}", folder) for a in self.args), Path(path), self.options)


def _part(name: str, noise: tuple[tuple[str, object], ...] = ()) -> PaperFile:
    """Table 5: one part of the seeded, class-stratified 25000/12500/12500 split of CIFAR-10."""
    sizes = {"A": 25_000, "B": 12_500, "C": 12_500}
    return PaperFile(("cifar10", "RAW/cifar10"), (("parts", "25000,12500,12500"), ("part", name), ("seed", 0),
                                                  *noise, ("download", True)), sizes[name])


def _union(*names: str) -> PaperFile:
    """Table 5: cifar-A merged with extra parts into one training set."""
    parts = {"A": "cifar-A", "B": "cifar-B", "C": "cifar-C-noise"}
    sizes = {"A": 25_000, "B": 12_500, "C": 12_500}
    return PaperFile(("concat", ",".join(f"{{data}}/{parts[n]}.beton" for n in names)), (),
                     sum(sizes[n] for n in names))


# ImageNet's 1,281,167 training images: ImgNet100 holds about a tenth of them (the classes are a
# seeded draw of 100 of the 1000, each with 732-1300 images), ImgNet900 the rest.
PAPER_FILES: dict[str, PaperFile] = {
    "cifar10-train.beton": PaperFile(("cifar10", "RAW/cifar10"), (("download", True),), 50_000),
    "cifar10-test.beton": PaperFile(("cifar10", "RAW/cifar10"), (("split", "test"), ("download", True)), 10_000),
    "cifar100-train.beton": PaperFile(("cifar100", "RAW/cifar100"), (("download", True),), 50_000),
    "cifar100-test.beton": PaperFile(("cifar100", "RAW/cifar100"), (("split", "test"), ("download", True)), 10_000),
    "svhn-train.beton": PaperFile(("svhn", "RAW/svhn"), (("download", True),), 73_257),
    "imagenet32-train.beton": PaperFile(("imagenet32", "RAW/Imagenet32_train"), (), 1_281_167),
    "imagenet32-test.beton": PaperFile(("imagenet32", "RAW/Imagenet32_val"), (("split", "test"),), 50_000),
    "places365-32-train.beton": PaperFile(("places365", "RAW/places365_standard"),
                                          (("size", 32), ("workers", 8)), 1_803_460),
    "places365-64-train.beton": PaperFile(("places365", "RAW/places365_standard"),
                                          (("size", 64), ("workers", 8)), 1_803_460),
    "imgnet100-train.beton": PaperFile(("imgnet100", "RAW/Imagenet64_train"), (("size", 64), ("seed", 0)),
                                       128_000),
    "imgnet100-test.beton": PaperFile(("imgnet100", "RAW/Imagenet64_val"),
                                      (("split", "test"), ("size", 64), ("seed", 0)), 5_000),
    "imgnet900-train.beton": PaperFile(("imgnet900", "RAW/Imagenet64_train"), (("size", 64), ("seed", 0)),
                                       1_153_000),
    # Appendix B, Table 5 (cifar-C carries uniform noise of 64 pixel levels: cifar-a-standard.toml)
    "cifar-A.beton": _part("A"),
    "cifar-B.beton": _part("B"),
    "cifar-C-noise.beton": _part("C", (("uniform-noise", 64),)),
    "cifar-AB.beton": _union("A", "B"),
    "cifar-AC.beton": _union("A", "C"),
    "cifar-ABC.beton": _union("A", "B", "C"),
    # Tables 3 and 7 (Carmon et al.): ImageNet pseudo-labelled by a standardly trained classifier
    # of the primary classes, the top 50k (CIFAR-10) or 5k (CIFAR-100) images per class.
    "imagenet32-pseudo-cifar10-500k.beton": PaperFile(
        ("runs/cifar10-standard", "{data}/imagenet32-train.beton"), (("top-k-per-class", 50000),), 500_000,
        "pseudo-label"),
    "imagenet32-pseudo-cifar100-500k.beton": PaperFile(
        ("runs/cifar100-standard", "{data}/imagenet32-train.beton"), (("top-k-per-class", 5000),), 500_000,
        "pseudo-label"),
    # Appendix C, Table 6: the robust datasets of the AT and AT+BiaMAT models (their presets' runs).
    "c10-robust-at.beton": PaperFile(("runs/cifar10-at", "{data}/cifar10-train.beton"), (), 50_000, "robustify"),
    "c10-robust-biamat.beton": PaperFile(("runs/cifar10-at-biamat-imagenet", "{data}/cifar10-train.beton"), (),
                                         50_000, "robustify"),
}


def prepare_command(path: str | Path) -> str:
    """The shell command that writes `path`, or a pointer to `prepare --help` for a file this
    table does not know."""
    recipe = PAPER_FILES.get(Path(path).name)
    if recipe is None:
        return f"(no recipe for {Path(path).name}: see `biamat-engine prepare --help`)"
    return recipe.step(path).command_line()


def published_images(path: str | Path) -> int | None:
    recipe = PAPER_FILES.get(Path(path).name)
    return recipe.images if recipe else None
