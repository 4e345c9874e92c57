"""The studies `biamat-engine study NAME` knows: each a grid of rows, one training run per row
and seed, and the table the paper reports for it.

A row says what is trained in the paper's own terms (method, primary data, auxiliary data, how
the auxiliary samples are used, any further setting); a scale (plan.py) turns that into a
config: `paper` through the row's preset and the paper's data, `demo` through the demo preset
and the built-in shapes data. So a grid is data, and a new study is a new `register(Grid(...))`
here, with no change to the planner or the runner:

- a row whose preset does not follow `PRIMARY-METHOD[-biamat-AUX]` names it (`preset=`);
- a row that starts from another row's run (pre-train -> fine-tune, Table 3) writes
  `{run:ROW}` in a setting (e.g. `train.init_from={run:pretrain-cifar100}`): the planner puts
  that row's run folder of the same seed there and runs it first;
- a grid whose demo stand-ins differ from the usual ones gives `stand_ins`;
- the paper's numbers for a row are looked up under `paper` (`TABLE.ROW` in
  paper_numbers.toml), by default the grid's table and the row's name.

Tables 3, 5, 6 and 7 (pre-training, the batch-size experiment, robust datasets, pseudo-labels)
come when their methods exist in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The paper's names of the datasets, by the presets' names for them.
DATASET_NAMES = {
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imgnet100": "ImgNet100", "svhn": "SVHN",
    "places365": "Places365", "imagenet": "ImageNet", "imgnet900": "ImgNet900",
}


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
    """`method.aux_mode` for a row with auxiliary data: biamat | labels | uniform."""
    settings: tuple[str, ...] = ()
    """Further `section.key=value` settings, applied last (e.g. `method.pi=0.45`)."""
    preset: str | None = None
    """The paper-scale preset, when it is not `PRIMARY-METHOD[-biamat-AUX[0]]`."""
    paper: str | None = None
    """`TABLE.ROW` of the paper's numbers for this row; default: the grid's table, this name."""

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

    def paper_key(self, row: Row) -> str | None:
        if row.paper:
            return row.paper
        return f"{self.paper_table}.{row.name}" if self.paper_table else None


GRIDS: dict[str, Grid] = {}


def register(grid: Grid) -> Grid:
    names = [row.name for row in grid.rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"study grid {grid.name!r}: row names must be unique, {', '.join(duplicates)} repeat")
    if any(len(row.cells) != len(grid.columns) for row in grid.rows):
        raise ValueError(f"study grid {grid.name!r}: every row needs one cell per column {grid.columns}")
    GRIDS[grid.name] = grid
    return grid


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(sorted(GRIDS))}")
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
        Row("at", ("AT", "-"), paper="table2.cifar10-at"),
        Row("at-labels", ("AT", "labels (y~)"), aux=("imagenet",), aux_mode="labels", paper="table1.labels-imagenet"),
        Row("at-uniform", ("AT", "uniform (y_ER)"), aux=("imagenet",), aux_mode="uniform",
            paper="table1.uniform-imagenet"),
        Row("at-biamat", ("AT+BiaMAT", "selected by confidence"), aux=("imagenet",),
            paper="table2.cifar10-at-biamat-imagenet"),
    ),
    stand_ins={"imagenet": "all"},
))
