"""The Fashion-MNIST setting: real images at laptop scale, shared by `biamat-engine demo` and
`study NAME --scale fashion-mnist` (docs/fashion-mnist-study.md), so the demo's one run and the
study's seeds are the same experiment.

Per seed, four files, each written by the `prepare` command its DataStep prints:

    primary    Fashion-MNIST training images of classes 0-4 (T-shirt/top, trouser, pullover,
               dress, coat), 60 per class drawn with the seed: a scarce primary task
    test       the test split's images of the same classes, 60 per class drawn with the seed
    related    the training split's other classes 5-9 (sandal, shirt, sneaker, bag, ankle boot),
               300 per class: same source, disjoint classes (CIFAR-100 to CIFAR-10 in Table 2)
    unrelated  the shapes generator's ten texture classes, 1500 images at 28x28 made grey: an
               unrelated domain in the same size and colour mode

The preset `fashion-mnist` (engine/presets/fashion-mnist.toml) holds the training setting.
"""

from __future__ import annotations

from pathlib import Path

from studies.data_steps import DataStep

PRESET = "fashion-mnist"
PRIMARY_CLASSES = "0,1,2,3,4"
AUX_CLASSES = "5,6,7,8,9"
PRIMARY_PER_CLASS = 60
TEST_PER_CLASS = 60
AUX_PER_CLASS = 300
TEXTURES = 1500
SIZE = 28
ROLES = ("primary", "test", "related", "unrelated")
"""The files of one seed; `related` and `unrelated` are the two auxiliary sets."""
AUX_ROLES = {"related": ("related",), "unrelated": ("unrelated",), "all": ("related", "unrelated")}
"""What a study's stand-in kind (studies/plan.py STAND_INS) trains on as auxiliary data."""


def default_source() -> Path:
    from loaders.sources.idx import FASHION_MNIST_DIR

    return FASHION_MNIST_DIR


def available(source: Path | None = None) -> bool:
    """Whether the four IDX files are there (Debian's `dataset-fashion-mnist` package)."""
    from loaders.sources.idx import fashion_mnist_files

    try:
        for split in ("train", "test"):
            fashion_mnist_files(source or default_source(), split)
    except (OSError, ValueError):
        return False
    return True


def data_steps(data_dir: Path, seed: int, source: Path | None = None) -> dict[str, DataStep]:
    """The `prepare` step writing each role's file of `seed` under `data_dir`, named by what it holds."""
    fashion = ("fashion-mnist", str(source or default_source()))

    def subset(split: str, classes: str, per_class: int) -> DataStep:
        name = f"fashion-mnist-{split}-c{classes.replace(',', '')}-n{per_class}-seed{seed}.beton"
        return DataStep("prepare", fashion, data_dir / name,
                        (("split", split), ("classes", classes), ("n-per-class", per_class), ("seed", seed)))

    textures = DataStep("prepare", ("shapes", "aux"),
                        data_dir / f"shapes-aux-unrelated-n{TEXTURES}-s{SIZE}-grey-seed{seed}.beton",
                        (("split", "train"), ("n", TEXTURES), ("size", SIZE), ("groups", "unrelated"), ("grey", True),
                         ("seed", seed)))
    return {"primary": subset("train", PRIMARY_CLASSES, PRIMARY_PER_CLASS),
            "test": subset("test", PRIMARY_CLASSES, TEST_PER_CLASS),
            "related": subset("train", AUX_CLASSES, AUX_PER_CLASS),
            "unrelated": textures}


def class_groups() -> dict[str, str]:
    """Auxiliary class name -> related / unrelated, as this setting means them: Fashion-MNIST's
    other classes related (same source), the textures unrelated (another domain)."""
    from loaders.sources.idx import FASHION_MNIST_CLASSES
    from loaders.sources.shapes import class_names

    related = [FASHION_MNIST_CLASSES[int(c)] for c in AUX_CLASSES.split(",")]
    return {**{name: "related" for name in related},
            **{name: "unrelated" for name in class_names("aux", groups="unrelated")}}
