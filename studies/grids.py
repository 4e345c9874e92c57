"""The studies `biamat-engine study NAME` knows: each a grid of rows, one training run per row
and seed, and the table the paper reports for it.

A row says what is trained in the paper's own terms (method, primary data, auxiliary data, how
the auxiliary samples are used, any further setting); a scale (plan.py) turns that into a
config: `paper` through the row's preset and the paper's data, `demo` through the demo preset
and the built-in shapes data. So a grid is data, and a new study is a new `register(Grid(...))`
here, with no change to the planner or the runner:

- a row whose preset does not follow `PRIMARY-METHOD[-biamat-AUX]` names it (`preset=`);
- a row that starts from another row's run (pre-train -> fine-tune, Table 3) writes
  `{run:ROW}` in a setting (e.g. `init.source={run:pretrain-cifar100}`): the planner puts
  that row's run folder of the same seed there (of the first seed, for a helper row) and runs
  it first;
- a row that only serves others (a pre-training, the classifier that pseudo-labels, the model a
  robust dataset is made from) is a `helper`: trained once, at the study's first seed, evaluated
  clean only, and listed apart from the table's rows in study.md, as the paper trains its source
  models once (Table 6: one robust dataset per source model, then 5 runs on it);
- a row that trains on data the study makes from a helper's run (Tables 3/7: pseudo-labels;
  Table 6: a robust dataset; Table 5 at demo scale: parts of the primary set) declares it as
  `derived`, naming the file its preset reads (paper_data.py holds how it is made; the study
  makes it before the row's first run, skipped when it exists);
- a grid evaluated otherwise than the scale's attacks names them (`attacks`);
- a grid whose demo stand-ins differ from the usual ones gives `stand_ins`;
- the paper's numbers for a row are looked up under `paper` (`TABLE.ROW` in
  paper_numbers.toml), by default the grid's table and the row's name.

"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kernels.errors import InputError
from studies.data_steps import DataStep
from studies.paper_data import PAPER_FILES

RUN_REF = re.compile(r"\{run:([^}]+)\}")
"""`{run:ROW}` in a row's setting: that row's run folder."""

# The paper's names of the datasets, by the presets' names for them.
DATASET_NAMES = {
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imgnet100": "ImgNet100", "svhn": "SVHN",
    "places365": "Places365", "imagenet": "ImageNet", "imgnet900": "ImgNet900",
}


# The data of the row that a Derived file takes the place of, by the command that writes it.
DERIVED_ROLES = {
    "pseudo-label": "aux",  # the row's (one) auxiliary dataset, labelled by the helper's model
    "robustify": "primary",  # the helper's primary training set, remade from its model's features
    "prepare": "primary",  # Table 5: the union of stratified parts of the primary set
}


@dataclass(frozen=True)
class Derived:
    """Data a row trains on in place of its own data.primary or data.aux (`role`): the file
    `file`, whose recipe (paper_data.PAPER_FILES: command and paper-scale options) says how it is
    made. With a helper `run`, the study makes it before the row's first run from that run's
    model: at paper scale by the recipe under --data-dir, at demo scale by the same command with
    `demo_options` on the shapes stand-in. Without one (Table 5's parts of CIFAR-10, prepared from
    the raw data), paper-scale rows read the prepared file and the demo scale makes its parts of
    the primary shapes set."""

    file: str
    """The file's name under --data-dir at paper scale (the name the row's preset reads, where it
    reads one: a file made by hand is used as it is); at demo scale the study names its files by
    what they hold."""
    run: str | None = None
    """The (helper) row whose trained model makes the data."""
    demo_options: tuple[tuple[str, object], ...] = ()
    """The command's options at demo scale (fewer steps, fewer images), as (option, value) (value
    True: a flag); without a `run`: the parts (`parts` sizes, the parts to `use`, the `noisy` ones
    and their `uniform-noise`)."""

    def __post_init__(self) -> None:
        if self.file not in PAPER_FILES:
            raise ValueError(f"derived data: no recipe for {self.file!r} in studies/paper_data.py PAPER_FILES")
        if self.command not in DERIVED_ROLES:
            raise ValueError(f"derived data {self.file}: made by {self.command}; expected one of {', '.join(DERIVED_ROLES)}")
        if (self.run is None) != (self.command == "prepare"):
            raise ValueError(f"derived data {self.file} by {self.command}: `run` names the row whose model makes it "
                             "(pseudo-label, robustify), and only then")

    @property
    def recipe(self) -> DataStep:
        """The step writing the file at paper scale, its inputs as the presets name them."""
        return PAPER_FILES[self.file]

    @property
    def command(self) -> str:
        return self.recipe.command

    @property
    def role(self) -> str:
        return DERIVED_ROLES[self.command]


@dataclass(frozen=True)
class Row:
    """One line of a study's table: what one run (per seed) trains, in the paper's terms."""

    name: str
    """Unique in the grid: the run folders' stem (`NAME-s0`) and the paper_numbers.toml key."""
    cells: tuple[str, ...]
    """The table's label columns (the grid's `columns`), as the paper writes them."""
    method: str = "at"
    """`method.name`: at | trades."""
    primary: str = "cifar10"
    """Primary data, by its preset name: cifar10 | cifar100 | imgnet100."""
    aux: tuple[str, ...] = ()
    """Auxiliary datasets, by their preset names (svhn, cifar100, places365, imagenet, imgnet900)."""
    aux_mode: str = "biamat"
    """`method.aux_mode` for a row with auxiliary data: biamat | labels | uniform | oracle."""
    settings: tuple[str, ...] = ()
    """Further `section.key=value` settings, applied last (e.g. `method.pi=0.45`)."""
    preset: str | None = None
    """The paper-scale preset, when it is not `PRIMARY-METHOD[-biamat-AUX[0]]`."""
    published: str | None = None
    """`TABLE.ROW` of the paper's published numbers for this row; default: the grid's table, this name."""
    demo: tuple[str, ...] = ()
    """Settings at demo scale only, after the grid's (e.g. a fine-tuning's shorter schedule)."""
    fashion: tuple[str, ...] = ()
    """Settings at the fashion-mnist scale only (what `demo` is to the shapes scale)."""
    helper: bool = False
    """A run the table's rows start from or make their data from, not a line of the table:
    trained at the first seed only, evaluated clean only."""
    derived: Derived | None = None
    """Data the study makes for this row from a helper's run (see Derived)."""
    trains_on: str | None = None
    """A pre-training's auxiliary dataset, trained on as its primary data (the preset's at paper
    scale; at demo scale the dataset's stand-in, its held-out split the test data)."""
    beyond_paper: bool = False
    """An engine option the paper does not have (docs/beyond-the-paper.md): no published numbers."""

    def refs(self) -> list[str]:
        """The rows this row needs trained first: {run:ROW} in its settings, its derived data's run."""
        named = [m for s in self.settings + self.demo for m in RUN_REF.findall(s)]
        return named + ([self.derived.run] if self.derived and self.derived.run else [])

    def paper_preset(self) -> str:
        base = f"{self.primary}-{self.method}"
        return self.preset or (f"{base}-biamat-{self.aux[0]}" if self.aux else base)

    def aux_preset(self, aux: str) -> str:
        """The single-auxiliary preset whose data.aux names `aux`'s file."""
        return f"{self.primary}-{self.method}-biamat-{aux}"


@dataclass(frozen=True)
class Grid:
    name: str
    title: str
    """The table's caption, naming the paper's table it reproduces."""
    about: str
    """What the grid measures and what the paper found, for study.md."""
    columns: tuple[str, ...]
    """Headers of the rows' label cells."""
    rows: tuple[Row, ...]
    paper_table: str | None = None
    """The paper_numbers.toml table its rows' numbers are in (None: the rows name their own)."""
    stand_ins: dict[str, str] = field(default_factory=dict)
    """Demo scale: auxiliary dataset -> shapes `groups`, where this grid differs from the usual
    stand-ins (plan.STAND_INS)."""
    attacks: tuple[str, ...] | None = None
    """The evaluation of the table's rows where the paper's differs from the scale's (Table 6:
    clean and FGSM; Table 5: clean only)."""
    demo_settings: tuple[str, ...] = ()
    """Settings of every run at demo scale, before the scale's own and the rows' (what a grid
    scales down to finish in minutes)."""

    def paper_key(self, row: Row) -> str | None:
        if row.beyond_paper:
            return None
        if row.published:
            return row.published
        return f"{self.paper_table}.{row.name}" if self.paper_table else None


GRIDS: dict[str, Grid] = {}


def register(grid: Grid) -> Grid:
    names = [row.name for row in grid.rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"study grid {grid.name!r}: row names must be unique, {', '.join(duplicates)} repeat")
    if any(len(row.cells) != len(grid.columns) for row in grid.rows):
        raise ValueError(f"study grid {grid.name!r}: every row needs one cell per column {grid.columns}")
    helpers = {row.name for row in grid.rows if row.helper}
    for row in grid.rows:
        if row.derived and row.derived.run and row.derived.run not in helpers:
            raise ValueError(f"study grid {grid.name!r}: row {row.name} makes its data from {row.derived.run}, "
                             "which is not a helper row of the grid")
    GRIDS[grid.name] = grid
    return grid


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise InputError(f"unknown study {name!r}; known: {', '.join(sorted(GRIDS))}")
    return GRIDS[name]


def _aux_cell(aux: tuple[str, ...]) -> str:
    return ", ".join(DATASET_NAMES[a] for a in aux) if aux else "-"


# -- Table 1: labels (y~) or uniform targets (y_ER) for the whole auxiliary dataset ---------------

TABLE1_AUX = ("svhn", "cifar100", "places365", "imagenet")
register(Grid(
    name="table1",
    title="Table 1: AT on CIFAR-10 with an auxiliary dataset trained on its labels (y~) or on uniform "
          "targets (y_ER), no warm-up; AA accuracy",
    about="Every auxiliary sample is used one way: with its own labels through its own head "
          "(`labels`), or with the uniform target through the primary head (`uniform`, OAT-like). "
          "The paper finds y_ER better for SVHN, CIFAR-100 and Places365 (weakly related to CIFAR-10 "
          "in robust features) and y~ better for ImageNet (closely related): the observation that "
          "motivates BiaMAT's per-sample selection.",
    columns=("targets", "auxiliary data"),
    rows=(Row("baseline", ("- (AT)", "-"), aux=(), aux_mode="none"),)
    + tuple(Row(f"{mode}-{aux}", (target, DATASET_NAMES[aux]), aux=(aux,), aux_mode=mode)
            for mode, target in (("labels", "y~ (labels)"), ("uniform", "y_ER (uniform)")) for aux in TABLE1_AUX),
    paper_table="table1",
))


# -- Table 2: every baseline and BiaMAT row, each a preset ------------------------------------------

def _table2_rows() -> tuple[Row, ...]:
    auxes = {"cifar10": ("svhn", "cifar100", "places365", "imagenet"),
             "cifar100": ("places365", "imagenet"), "imgnet100": ("places365", "imgnet900")}
    rows = []
    for primary, aux_sets in auxes.items():
        for method in ("at", "trades"):
            label = method.upper()
            rows.append(Row(f"{primary}-{method}", (DATASET_NAMES[primary], label, "-"), method=method,
                            primary=primary))
            rows += [Row(f"{primary}-{method}-biamat-{aux}", (DATASET_NAMES[primary], f"{label}+BiaMAT",
                                                                DATASET_NAMES[aux]),
                         method=method, primary=primary, aux=(aux,)) for aux in aux_sets]
    return tuple(rows)


register(Grid(
    name="table2",
    title="Table 2: AT and TRADES with and without BiaMAT on CIFAR-10, CIFAR-100 and ImgNet100",
    about="Each row is the preset of the same name (engine/presets), which holds the paper's settings "
          "(Section 3.1, Appendix E, Table 12). The paper reports BiaMAT above its baseline for every "
          "auxiliary dataset.",
    columns=("primary data", "method", "auxiliary data"),
    rows=_table2_rows(),
    paper_table="table2",
))


# -- Table 4: two auxiliary datasets at once --------------------------------------------------------

TABLE4_AUX = (("svhn",), ("cifar100",), ("svhn", "cifar100"), ("places365",), ("imagenet",),
              ("places365", "imagenet"))
register(Grid(
    name="table4",
    title="Table 4: AT+BiaMAT on CIFAR-10 with one or two auxiliary datasets",
    about="Two auxiliary datasets share the auxiliary half of each batch (each its own head). The "
          "paper finds that more auxiliary data does not always help: SVHN + CIFAR-100 is below "
          "CIFAR-100 alone, Places365 + ImageNet below ImageNet alone.",
    columns=("method", "auxiliary data"),
    rows=(Row("at", ("AT", "-")),)
    + tuple(Row("at-biamat-" + "-".join(aux), ("AT+BiaMAT", _aux_cell(aux)), aux=aux) for aux in TABLE4_AUX),
    paper_table="table4",
))


# -- Table 13: the threshold factor pi ---------------------------------------------------------------

PI_VALUES = ("0.45", "0.50", "0.55", "0.60", "0.65", "0.70")
register(Grid(
    name="table13",
    title="Table 13: ablation of pi (omega = pi x mean confidence), CIFAR-10 with ImageNet; AA accuracy",
    about="AT+BiaMAT and TRADES+BiaMAT with ImageNet as the auxiliary data, pi from 0.45 to 0.70, "
          "everything else as Table 2. The paper finds AT smooth around its best pi (0.55) and "
          "TRADES more sensitive.",
    columns=("method", "pi"),
    rows=tuple(Row(f"{method}-pi{pi}", (f"{method.upper()}+BiaMAT", pi), method=method, aux=("imagenet",),
                   settings=(f"method.pi={pi}",)) for method in ("at", "trades") for pi in PI_VALUES),
    paper_table="table13",
))


# -- The amplification claim: what the auxiliary data adds to AT, used each way ---------------------

_PLAIN_AT = Row("at", ("AT", "-"), published="table2.cifar10-at")
"""Plain AT, the baseline of the amplification grid and of the beyond grid."""

register(Grid(
    name="amplification",
    title="AT alone and with one auxiliary dataset used three ways: labels, uniform, BiaMAT's selection",
    about="The paper's central comparison in one grid (CIFAR-10 with ImageNet at paper scale): "
          "plain AT (Table 2), every auxiliary sample on its labels or on uniform targets (Table 1, "
          "no warm-up), and BiaMAT's per-sample confidence selection (Table 2). At demo scale the "
          "auxiliary data is the demo's own (related and unrelated classes), so the selection can be "
          "checked: related classes should be routed high more often than unrelated ones.",
    columns=("method", "auxiliary data used as"),
    rows=(
        _PLAIN_AT,
        Row("at-labels", ("AT", "labels (y~)"), aux=("imagenet",), aux_mode="labels", published="table1.labels-imagenet"),
        Row("at-uniform", ("AT", "uniform (y_ER)"), aux=("imagenet",), aux_mode="uniform",
            published="table1.uniform-imagenet"),
        Row("at-biamat", ("AT+BiaMAT", "selected by confidence"), aux=("imagenet",),
            published="table2.cifar10-at-biamat-imagenet"),
    ),
    stand_ins={"imagenet": "all"},
))


# -- Beyond the paper: when omega is fixed, auxiliary BatchNorm, and the oracle gate --------------

# Demo scale (400 primary images, 60 epochs): the fixed warm-up becomes the paper's 5 epochs as a
# least, the level 3x chance of the 10 shape classes, the latest epoch leaves 15 epochs routed, and
# the slice is 1/8 of the primary images (a cost of the option, measured with it).
_OMEGA_ACC = ("method.omega_when=accuracy",)
_OMEGA_ACC_DEMO = ("method.warmup_epochs=5", "method.omega_accuracy=0.3", "method.omega_latest_epoch=45",
                   "method.omega_holdout=50")
# Fashion-MNIST scale (300 primary images of 5 classes, 15 epochs): the paper's 5 epochs as a least,
# the level 3x chance of 5 classes, the latest epoch leaves 5 epochs routed, and the slice is 1/8 of
# the primary images (docs/fashion-mnist-study.md).
_OMEGA_ACC_FASHION = ("method.omega_accuracy=0.6", "method.omega_latest_epoch=10", "method.omega_holdout=38")

register(Grid(
    name="beyond",
    title="AT+BiaMAT with the engine's options beyond the paper: omega fixed by a held-out accuracy, "
          "auxiliary BatchNorm, both, and the oracle gate",
    about="The amplification study's AT and AT+BiaMAT arms beside the options no published BiaMAT code "
          "has (docs/beyond-the-paper.md): omega fixed once the primary head's clean accuracy on a "
          "held-out slice of the primary training data reaches a level (method.omega_when = accuracy), "
          "separate BatchNorm for the auxiliary images (model.aux_bn = separate), both, and the oracle "
          "gate that routes by the shapes generator's own related/unrelated groups (demo scale only: "
          "paper-scale data records no groups, and that row is refused when it starts). The auxiliary "
          "data at demo scale holds related and unrelated classes, as the amplification study's.",
    columns=("method", "option"),
    rows=(
        _PLAIN_AT,
        Row("at-biamat", ("AT+BiaMAT", "none: the reference"), aux=("imagenet",),
            published="table2.cifar10-at-biamat-imagenet"),
        Row("at-biamat-omega-acc", ("AT+BiaMAT", "omega fixed by held-out accuracy"), aux=("imagenet",),
            settings=_OMEGA_ACC, demo=_OMEGA_ACC_DEMO, fashion=_OMEGA_ACC_FASHION, beyond_paper=True),
        Row("at-biamat-aux-bn", ("AT+BiaMAT", "separate auxiliary BatchNorm"), aux=("imagenet",),
            settings=("model.aux_bn=separate",), beyond_paper=True),
        Row("at-biamat-both", ("AT+BiaMAT", "both"), aux=("imagenet",),
            settings=_OMEGA_ACC + ("model.aux_bn=separate",), demo=_OMEGA_ACC_DEMO, fashion=_OMEGA_ACC_FASHION,
            beyond_paper=True),
        Row("at-oracle", ("AT+oracle gate", "related high, unrelated low"), aux=("imagenet",), aux_mode="oracle",
            beyond_paper=True),
    ),
    stand_ins={"imagenet": "all"},
))


# -- Tables 3 and 7: BiaMAT vs Carmon et al.'s pseudo-labels and Hendrycks et al.'s pre-training --

# Pre-trainings (Hendrycks et al.), each on an auxiliary dataset as its primary data, and the
# standardly trained classifiers that pseudo-label the auxiliary data (Carmon et al.): helpers.
def _pretrain(aux: str, prefixed: bool) -> Row:
    return Row(f"pretrain-{aux}", (DATASET_NAMES[aux], "pre-training (helper)", "-")[:2 + prefixed], method="trades",
               trains_on=aux, preset=f"{'imagenet32' if aux == 'imagenet' else aux}-trades-pretrain", helper=True,
               demo=("optim.epochs=6",))  # on the stand-in's 4000 images: 10x the primary's per epoch


def _classifier(primary: str, prefixed: bool) -> Row:
    return Row(f"classifier-{primary}", (DATASET_NAMES[primary], "labelling classifier (helper)", "-")[:2 + prefixed],
               method="standard", primary=primary, preset=f"{primary}-standard", helper=True)


# ImageNet-(N x 100)k at demo scale: the top K per class that takes about the same share of the
# stand-in's 4000 images as the paper's (paper_data.py) of ImageNet's.
_DEMO_TOP_K = {("cifar10", 500): 150, ("cifar10", 250): 75, ("cifar10", 100): 30,
               ("cifar100", 500): 100, ("cifar100", 250): 50, ("cifar100", 100): 20}
# The fine-tuning from a pre-training (the presets' init.heads and schedule, Appendix E), at
# demo scale a fifth of the demo's epochs from the pre-training's best checkpoint.
_FINETUNE = ("init.heads=new", "optim.schedule_offset=global-step")


def _prefix(primary: str, prefixed: bool) -> str:
    return f"{primary}-" if prefixed else ""


def _hendrycks(primary: str, aux: str, prefixed: bool) -> Row:
    return Row(f"{_prefix(primary, prefixed)}hendrycks-{aux}",
               (DATASET_NAMES[primary], "Hendrycks et al. (pre-training)", DATASET_NAMES[aux])[-2 - prefixed:],
               method="trades", primary=primary, preset=f"{primary}-trades-finetune-{aux}",
               settings=(f"init.source={{run:pretrain-{aux}}}",) + _FINETUNE, demo=("optim.epochs=8",))


def _carmon(primary: str, aux: str, size: int | None, prefixed: bool, published: str | None = None) -> Row:
    """Carmon et al. (RST): TRADES on the primary data plus the auxiliary data pseudo-labelled by
    the primary classifier, every image (--all) or the top `size`k (ImageNet-500k...)."""
    source = "imagenet32" if aux == "imagenet" else {"places365": "places365-32"}.get(aux, aux)
    name = f"{aux}{size}k" if size else aux
    at_demo = (("top-k-per-class", _DEMO_TOP_K[(primary, size)]),) if size else (("all", True),)
    label = f"ImageNet-{size}k" if size else DATASET_NAMES[aux]
    return Row(f"{_prefix(primary, prefixed)}carmon-{name}",
               (DATASET_NAMES[primary], "Carmon et al. (pseudo-labels)", label)[-2 - prefixed:],
               method="trades", primary=primary, aux=(aux,), aux_mode="pseudo",
               preset=f"{primary}-trades-pseudo-imagenet500k", published=published,
               derived=Derived(f"{source}-pseudo-{primary}-{f'{size}k' if size else 'all'}.beton",
                               run=f"classifier-{primary}", demo_options=at_demo))


def _biamat(primary: str, aux: str, prefixed: bool, published: str | None = None) -> Row:
    return Row(f"{_prefix(primary, prefixed)}biamat-{aux}",
               (DATASET_NAMES[primary], "TRADES+BiaMAT", DATASET_NAMES[aux])[-2 - prefixed:],
               method="trades", primary=primary, aux=(aux,), published=published)


_RST_ABOUT = (
    "Carmon et al.'s rows train TRADES on the primary data and, in each batch, as many auxiliary images "
    "pseudo-labelled by a standardly trained classifier of the primary classes (a helper run; "
    "`biamat-engine pseudo-label`, made by the study), every image or the top K per class "
    "(ImageNet-(N x 100)k); Hendrycks et al.'s rows fine-tune adversarially on the primary data a model "
    "pre-trained adversarially on the auxiliary data (a helper run; `init.source`, the schedule going on "
    "from the pre-training's best epoch).")
_RST_DEMO = (
    "Demo scale: {epochs} epochs instead of the demo's 60 (warm-up {warmup}); a pre-training trains 6 epochs on "
    "the auxiliary dataset's stand-in (4000 images) as its primary data (CIFAR-100: the shapes auxiliary set, "
    "20 classes; ImageNet: its related classes), its fine-tuning 8 epochs; the top K per class is scaled to "
    "about the same share of the stand-in's 4000 images (ImageNet-500k: 150 per class for CIFAR-10); every "
    "helper (and the data made from it) once, at the first seed.")

register(Grid(
    name="table3",
    title="Table 3: TRADES on CIFAR-10 with BiaMAT, Carmon et al.'s pseudo-labels and Hendrycks et al.'s "
          "pre-training, each with CIFAR-100, Places365 or ImageNet",
    about=_RST_ABOUT + " The paper finds both methods hurt by auxiliary data unlike the primary's (CIFAR-100, "
          "Places365: below the TRADES baseline) and BiaMAT above the baseline with each. "
          + _RST_DEMO.format(epochs=30, warmup=13),
    columns=("method", "auxiliary data"),
    rows=(_pretrain("cifar100", False), _pretrain("imagenet", False), _classifier("cifar10", False),
          Row("baseline", ("TRADES (baseline)", "-"), method="trades"),
          _hendrycks("cifar10", "cifar100", False), _hendrycks("cifar10", "imagenet", False))
    + tuple(_carmon("cifar10", aux, None, False) for aux in ("cifar100", "places365", "imagenet"))
    + (_carmon("cifar10", "imagenet", 500, False),)
    + tuple(_biamat("cifar10", aux, False) for aux in ("cifar100", "places365", "imagenet")),
    paper_table="table3",
    demo_settings=("optim.epochs=30", "method.warmup_epochs=13"),
))

register(Grid(
    name="table7",
    title="Table 7: BiaMAT, Carmon et al.'s pseudo-labels (ImageNet-500k, -250k, -100k) and Hendrycks et "
          "al.'s pre-training with TRADES on CIFAR-10 and CIFAR-100",
    about=_RST_ABOUT + " Table 3 with CIFAR-100 as a primary dataset and smaller pseudo-labelled ImageNet "
          "subsets; the TRADES baselines (Table 2) for reference. Gowal et al.'s generated-data rows are left "
          "out (the engine trains no generative model). The paper's transcription lost most of this "
          "table's numbers (study.md shows `-`); those of Table 3 and Table 2 stand for the rows they share. "
          + _RST_DEMO.format(epochs=20, warmup=8),
    columns=("primary data", "method", "auxiliary data"),
    rows=(_pretrain("cifar100", True), _pretrain("imagenet", True), _classifier("cifar10", True),
          _classifier("cifar100", True))
    + tuple(row for primary, auxes, hendrycks in (("cifar10", ("cifar100", "places365", "imagenet"),
                                                   ("cifar100", "imagenet")),
                                                  ("cifar100", ("places365", "imagenet"), ("imagenet",)))
            for row in (
                (Row(f"{primary}-baseline", (DATASET_NAMES[primary], "TRADES (baseline)", "-"), method="trades",
                     primary=primary, published=f"table2.{primary}-trades"),)
                + tuple(_hendrycks(primary, aux, True) for aux in hendrycks)
                + tuple(_carmon(primary, aux, None, True) for aux in auxes if aux != "cifar100" or primary == "cifar10")
                + tuple(_carmon(primary, "imagenet", size, True, published="table3.carmon-imagenet500k"
                                if (primary, size) == ("cifar10", 500) else None) for size in (500, 250, 100))
                + tuple(_biamat(primary, aux, True, published=(f"table3.biamat-{aux}" if primary == "cifar10"
                                                               else f"table2.{primary}-trades-biamat-{aux}"))
                        for aux in auxes))),
    paper_table="table7",
    demo_settings=("optim.epochs=20", "method.warmup_epochs=8"),
))


# -- Table 6 (Appendix C): standard training on the robust datasets of AT and AT+BiaMAT ---------------

register(Grid(
    name="table6",
    title="Table 6: standard training on the robust dataset of an AT and of an AT+BiaMAT model (CIFAR-10); "
          "clean and FGSM accuracy",
    about="Each source model (a helper run: AT, AT+BiaMAT with ImageNet) remakes the CIFAR-10 training set as "
          "its robust dataset (Ilyas et al.: each image replaced by another whose features match it, "
          "`biamat-engine robustify`, made by the study); a model is then trained from scratch on each with "
          "plain cross-entropy and evaluated clean and under FGSM. The paper (5 runs each) finds the "
          "AT+BiaMAT dataset gives the more accurate and more robust models. Demo scale: the demo's source "
          "runs and 100 feature-matching steps per image instead of 1000.",
    columns=("source model",),
    rows=(Row("source-at", ("source model: AT",), preset="cifar10-at", helper=True),
          Row("source-biamat", ("source model: AT+BiaMAT",), aux=("imagenet",), helper=True),
          Row("at", ("AT",), method="standard", preset="cifar10-robust-at",
              derived=Derived("c10-robust-at.beton", run="source-at", demo_options=(("steps", 100),))),
          Row("biamat", ("AT+BiaMAT",), method="standard", preset="cifar10-robust-biamat",
              derived=Derived("c10-robust-biamat.beton", run="source-biamat", demo_options=(("steps", 100),)))),
    paper_table="table6",
    attacks=("clean", "fgsm"),
))


# -- Table 5 (Appendix B): extra data and the batch size, standard training -------------------------------

# cifar-A, -B, -C: 25000/12500/12500 of CIFAR-10's training set, uniform noise on C. Demo: the same
# 2:1:1 split of 800 primary shapes (A: the demo's 400), noise of 64 pixel levels on C.
_TABLE5_PARTS = {"A": "cifar-A", "AB": "cifar-A + cifar-B", "AC": "cifar-A + cifar-C", "ABC": "cifar-A + cifar-B + cifar-C"}
register(Grid(
    name="table5",
    title="Table 5: ResNet-18 trained normally on cifar-A with cifar-B and/or the noisy cifar-C merged in, at "
          "batch 128 and 1024; test error = 100 - clean",
    about="Not adversarial: the paper's point that more data is not always better. At batch 128 cifar-B helps, "
          "the noisy cifar-C helps less, and both together are below cifar-B alone; at large batches both "
          "together are best. Demo scale: the demo's WideResNet on a 400/200/200 split of 800 primary shapes "
          "(noise 64 on C), batch 16 and 128 (the paper's 8x), evaluated clean.",
    columns=("batch size", "dataset"),
    rows=tuple(Row(f"{parts.lower()}-b{batch}", (str(batch), label), method="standard",
                   preset=f"cifar-{parts.lower()}-standard" + ("" if batch == 128 else f"-b{batch}"),
                   demo=(f"data.batch_size={demo_batch}",),
                   derived=Derived(f"cifar-{parts}.beton", demo_options=(("parts", "400,200,200"), ("use", parts),
                                                                         ("noisy", "C"), ("uniform-noise", 64))))
               for batch, demo_batch in ((128, 16), (1024, 128)) for parts, label in _TABLE5_PARTS.items()),
    paper_table="table5",
    attacks=("clean",),
))
