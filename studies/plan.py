"""A study's plan: grid x scale x seeds -> runs, each with its config, its folder, the exact
`train` and `eval` commands that do the same, and an estimate of the images it processes.

Scales turn a grid row (the paper's terms, grids.Row) into a preset plus typed overrides
({"section.key": value}; engine.config.Overrides), which `train_command` writes as flags:

- `paper`: the row's preset (the paper's data and hyperparameters), its .beton files looked
  for under --data-dir; evaluated with clean, PGD-100, CW-100 and AutoAttack as the paper.
- `demo`: the demo preset (WRN-10-2 at 16x16, 60 epochs, PGD-2 training; docs/demo-study.md)
  on the built-in shapes data, with the row's method settings (method, auxiliary mode, alpha,
  pi, beta, TRADES' high-sample loss) from its paper preset; evaluated with clean, PGD-20 and
  CW-20 on the 500 held-out images. The seed draws the data as well as the run.
- `fashion-mnist`: the fashion-mnist preset (WRN-10-2 at 28x28, 15 epochs, PGD-3 training at
  eps 0.1) on real images (studies/fashion_mnist.py: a scarce 5-class primary set, the other 5
  classes and grey textures as auxiliary data), the row's method settings as at demo scale;
  evaluated with clean, PGD-20 and CW-20 on 300 test images. Its files are written under
  --data-dir by `prepare` steps, per seed. Rows that need a helper's run or derived data, another
  primary dataset than CIFAR-10, or the oracle gate (no recorded groups) are left out, with a note.

Data a row trains on that the study makes itself (grids.Derived: pseudo-labels, robust
datasets, Table 5's parts) becomes DataSteps (data_steps.py), made from the helper's run of the
study's first seed: at paper scale by the recipe of the file the row's preset reads
(paper_data.PAPER_FILES), under --data-dir, the study's helper run and data its inputs; at demo
scale by the same command under OUT/data (the shapes inputs written as .beton files first, since
the commands read files).

The paper's datasets have no place on a laptop, so at demo scale each stands in as a shapes set
(STAND_INS; shapes `groups` keeps related classes, unrelated ones or both; see
loaders/sources/shapes.py). These are stand-ins chosen by what the paper says of each dataset,
not the paper's data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.config import Overrides, load_config, load_preset, parse_overrides
from engine.run_dir import RunDir
from kernels.errors import InputError
from studies.data_steps import DataStep
from studies.grids import RUN_REF, Derived, Grid, Row
from studies.paper_data import prepare_command, published_images

if TYPE_CHECKING:
    from engine.config import TrainConfig

# Demo scale: what each auxiliary dataset of the paper becomes (shapes `groups`), by what the
# paper says of it. SVHN (digits) shares no robust features with CIFAR-10: the textures only.
# CIFAR-100 and Places365 are "weakly related" (Table 1: uniform targets beat labels; Fig. 3:
# mostly routed low) but hold some related images: both kinds of class. ImageNet is "closely
# related" (Table 1: labels beat uniform; it holds CIFAR-10's classes, Table 14): the primary's
# shapes in another domain only. ImgNet900 (ImageNet's other classes beside ImgNet100): both.
# Datasets that share a stand-in train the same run (the plan runs it once).
STAND_INS = {"svhn": "unrelated", "cifar100": "all", "places365": "all", "imagenet": "related", "imgnet900": "all"}
# Demo scale: primary shape classes standing in for each primary dataset (more classes: harder).
PRIMARY_CLASSES = {"cifar10": 10, "cifar100": 16, "imgnet100": 16}
# The method settings a demo run takes from its row's paper preset (the rest is the demo's).
METHOD_KEYS = ("name", "alpha", "pi", "beta", "high_loss")
# A helper row (a pre-training, a labelling classifier, a source model) is evaluated clean only.
HELPER_ATTACKS = ("clean",)


@dataclass(frozen=True)
class RunPlan:
    """One run of a study: a grid row at one seed."""

    row: Row
    seed: int
    dir: Path
    preset: str
    overrides: tuple[tuple[str, object], ...]
    """("section.key", value) over the preset, in the order they apply."""
    config: "TrainConfig"
    attacks: tuple[str, ...]
    train_images: int | None
    eval_images: int | None
    same_as: str | None = None
    """The run (folder name) whose config this one repeats: its results stand for both."""
    data_steps: tuple[DataStep, ...] = ()
    """The data files the study makes for this run, in the order they are made."""
    needs: tuple[str, ...] = ()
    """The runs (folder names) trained before this one: those its settings name ({run:ROW})
    and those whose model makes its data."""

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def results_dir(self) -> Path:
        """Where this run's results are: its own folder, or that of the run it repeats."""
        return self.dir.with_name(self.same_as) if self.same_as else self.dir

    @property
    def test(self) -> str:
        return self.config.data.test

    def train_command(self) -> str:
        args = []
        for key, value in self.overrides:
            if key == "data.aux" and isinstance(value, (list, tuple)) and value:  # paths may hold commas: one flag each
                args += [a for path in value for a in ("--aux", str(path))]
            else:
                args += ["--set", f"{key}={_flag_text(value)}"]
        return shlex.join(["biamat-engine", "train", "--preset", self.preset, *args, "--out", str(self.dir)])

    def eval_command(self) -> str:
        return shlex.join(["biamat-engine", "eval", str(self.dir), "--test", self.test,
                           "--attacks", ",".join(self.attacks), "--out", str(RunDir(self.dir).eval_report)])


@dataclass
class StudyPlan:
    grid: Grid
    scale: str
    out: Path
    seeds: tuple[int, ...]
    runs: list[RunPlan]
    missing: list[tuple[str, str]] = field(default_factory=list)
    """(file, the command that writes it) for each data file a run or a data step needs, that is
    not there and that the study does not make."""
    notes: list[str] = field(default_factory=list)
    data_steps: list[DataStep] = field(default_factory=list)
    """Every data file the study makes, each once, in the order they are made."""
    class_groups: dict[str, str] | None = None
    """Auxiliary class name -> related / unrelated, where the scale declares them (Scale.class_groups);
    None: the data's own related flags."""

    def unique_runs(self) -> list[RunPlan]:
        """The runs that train (a run repeating another's config is not trained twice)."""
        return [r for r in self.runs if r.same_as is None]


class Scale(Protocol):
    name: str
    default_seeds: tuple[int, ...]

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, dict[str, object]]:
        """(preset, overrides) of the row's run at `seed`."""

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        """The evaluation's attacks, and notes on any the paper has that this one leaves out."""

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        """The files the run reads that must exist before it starts."""

    def derive(self, derived: Derived, row_cfg: "TrainConfig", helper: "RunPlan | None",
               out: Path, data_dir: Path) -> list[DataStep]:
        """The steps that make `derived` for a row configured as `row_cfg` (its last step writes
        the file the row reads instead of its data.primary / data.aux); none: the row reads its
        own data."""

    def inputs(self, seed: int, data_dir: Path) -> list[DataStep]:
        """The steps writing the files every run of `seed` reads that the scale makes itself."""

    def unsupported(self, row: Row) -> str | None:
        """Why the scale cannot run `row` (it is left out of the plan with this note); None: it can."""

    def class_groups(self) -> dict[str, str] | None:
        """Auxiliary class name -> related / unrelated for the routing tables, where the scale
        declares them; None: the data's related flags (shapes records them)."""


def _flag_text(value: object) -> str:
    """An override's value as `--set` reads it back (lists comma-joined, booleans in TOML's spelling)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _device_option(helper: "RunPlan") -> tuple[tuple[str, object], ...]:
    """The device the helper ran on, for the command that reads its model (`--set runtime.device`)."""
    device = helper.config.runtime.device
    return () if device == "auto" else (("device", device),)


def _derived_input(derived: Derived, row_cfg: "TrainConfig", helper: "RunPlan") -> str:
    """What the command reads: the row's one auxiliary dataset (pseudo-label), the helper's
    primary training set (robustify)."""
    if derived.command == "pseudo-label":
        if len(row_cfg.data.aux) != 1:
            raise ValueError(f"pseudo-labelled data is made from one auxiliary dataset; the row has {len(row_cfg.data.aux)}")
        return row_cfg.data.aux[0]
    return helper.config.data.primary


def _autoattack_installed() -> bool:
    from engine.evaluation.autoattack_runner import import_autoattack

    try:
        import_autoattack()
        return True
    except ImportError:
        return False


class _MakesNoData:
    """What most scales share: no input files of their own to make (the paper's are prepared by
    hand, missing_data_message prints the commands; shapes are generated in memory), every row
    runs, and the data's own related flags group the auxiliary classes."""

    def inputs(self, seed: int, data_dir: Path) -> list[DataStep]:
        return []

    def unsupported(self, row: Row) -> str | None:
        return None

    def class_groups(self) -> dict[str, str] | None:
        return None


@dataclass(frozen=True)
class PaperScale(_MakesNoData):
    """The paper's data and hyperparameters: each row's preset, data under --data-dir."""

    name: str = "paper"
    default_seeds: tuple[int, ...] = (0,)  # the paper reports one run per row

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, dict[str, object]]:
        preset = row.paper_preset()
        data = load_preset(preset)["data"]

        def here(spec: str) -> str:  # the preset's file (data/NAME.beton), under --data-dir
            return str(data_dir / Path(spec).name)

        overrides: dict[str, object] = {"data.primary": here(data["primary"]), "data.test": here(data["test"])}
        if row.aux:
            overrides["data.aux"] = [here(load_preset(row.aux_preset(a))["data"]["aux"][0]) for a in row.aux]
            overrides["method.aux_mode"] = row.aux_mode
        return preset, {**overrides, **parse_overrides(row.settings), "runtime.seed": seed}

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        if _autoattack_installed():
            return ("clean", "pgd100", "cw100", "aa"), []
        return ("clean", "pgd100", "cw100"), [
            "AA not measured: AutoAttack is not installed (pip install 'biamat-engine[autoattack]'); "
            "a later `study` run with it installed evaluates the finished runs again"]

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        return [cfg.data.primary, cfg.data.test, *cfg.data.aux]

    def derive(self, derived: Derived, row_cfg: "TrainConfig", helper: "RunPlan | None",
               out: Path, data_dir: Path) -> list[DataStep]:
        if derived.run is None:
            return []  # the row's preset reads the prepared parts (paper_data.py: their prepare commands)
        recipe = derived.recipe.at(data_dir)
        # The recipe's inputs are the presets' (runs/PRESET, the data folder's file): the study's are its own.
        return [dataclasses.replace(recipe, args=(str(helper.dir), _derived_input(derived, row_cfg, helper)),
                                    options=recipe.options + _device_option(helper), after=helper.dir)]


@dataclass(frozen=True)
class ShapesScale(_MakesNoData):
    """The demo preset on the built-in shapes data: the paper's grid in minutes per run on a CPU."""

    name: str = "demo"
    default_seeds: tuple[int, ...] = (0, 1, 2)
    data: dict = field(default_factory=dict)
    """Shapes options per role (primary, aux, test) over the demo preset's, e.g. {"primary": {"n": 24}}."""
    settings: tuple[str, ...] = ()
    """Overrides of the demo preset for every run (a smaller scale's epochs, model, ...)."""
    eval_attacks: tuple[str, ...] = ("clean", "pgd20", "cw20")

    def _spec(self, preset: dict, role: str, **options) -> str:
        from loaders.datasets import parse_shapes_spec, shapes_spec

        key = {"primary": "primary", "test": "test"}.get(role)
        kind, base = parse_shapes_spec(preset["data"][key] if key else preset["data"]["aux"][0])
        return shapes_spec(kind, {**base, **self.data.get(role, {}), **options})

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, dict[str, object]]:
        demo = load_preset("demo")
        classes = PRIMARY_CLASSES[row.primary]
        stand_ins = {**STAND_INS, **grid.stand_ins}
        aux = [self._spec(demo, "aux", classes=classes, seed=seed, groups=stand_ins[a]) for a in row.aux]
        primary = self._spec(demo, "primary", classes=classes, seed=seed)
        test = self._spec(demo, "test", classes=classes, seed=seed)
        if row.trains_on:  # a pre-training: the auxiliary dataset's stand-in, its held-out split the test
            from loaders.datasets import parse_shapes_spec

            groups = stand_ins[row.trains_on]
            primary = self._spec(demo, "aux", classes=classes, seed=seed, groups=groups)
            test = self._spec(demo, "aux", classes=classes, seed=seed, groups=groups, n=parse_shapes_spec(test)[1]["n"])
        overrides = {"data.primary": primary, "data.test": test, "data.aux": aux, **_method_overrides(row)}
        # The grid's and the row's demo-scale settings, then this scale's own (a smaller scale
        # shrinks every grid), then the row's (what the row is).
        scaled = parse_overrides([*grid.demo_settings, *row.demo, *self.settings])
        return "demo", {**overrides, **scaled, **parse_overrides(row.settings), "runtime.seed": seed}

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        return self.eval_attacks, []

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        return []  # generated in memory

    def derive(self, derived: Derived, row_cfg: "TrainConfig", helper: "RunPlan | None",
               out: Path, data_dir: Path) -> list[DataStep]:
        data = out / "data"
        if derived.run is None:
            return _parts_steps(dict(derived.demo_options), row_cfg.data.primary, data)
        source = _shapes_file(_derived_input(derived, row_cfg, helper), data)
        step = DataStep(derived.command, (str(helper.dir), str(source.out)), Path(), derived.demo_options + _device_option(helper),
                        after=helper.dir)
        return [source, _named(step, data)]


@dataclass(frozen=True)
class FashionMnistScale:
    """The fashion-mnist preset on real images (studies/fashion_mnist.py), the setting of the demo."""

    name: str = "fashion-mnist"
    default_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    source: Path | None = None
    """The folder of Fashion-MNIST's IDX files (default: Debian's dataset-fashion-mnist)."""
    eval_attacks: tuple[str, ...] = ("clean", "pgd20", "cw20")

    def unsupported(self, row: Row) -> str | None:
        if row.helper or row.derived or row.trains_on or RUN_REF.search(" ".join(row.settings + row.demo)):
            return "it needs a helper's run or data made from one, which this scale does not make"
        if row.primary != "cifar10":
            return f"its primary data is {row.primary}; this scale has one primary task (CIFAR-10's stand-in)"
        if row.aux_mode == "oracle":
            return "the oracle gate needs auxiliary data that records related/unrelated groups; Fashion-MNIST records none"
        return None

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, dict[str, object]]:
        from studies import fashion_mnist

        files = {role: str(step.out) for role, step in fashion_mnist.data_steps(data_dir, seed, self.source).items()}
        stand_ins = {**STAND_INS, **grid.stand_ins}
        aux = list(dict.fromkeys(files[role] for a in row.aux for role in fashion_mnist.AUX_ROLES[stand_ins[a]]))
        overrides = {"data.primary": files["primary"], "data.test": files["test"], "data.aux": aux,
                     **_method_overrides(row)}
        return fashion_mnist.PRESET, {**overrides, **parse_overrides(row.fashion), **parse_overrides(row.settings),
                                      "runtime.seed": seed}

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        return self.eval_attacks, []

    def class_groups(self) -> dict[str, str] | None:
        from studies import fashion_mnist

        return fashion_mnist.class_groups()

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        return []  # every file is made by the scale's own steps (inputs)

    def derive(self, derived: Derived, row_cfg: "TrainConfig", helper: "RunPlan | None",
               out: Path, data_dir: Path) -> list[DataStep]:
        raise AssertionError("rows with derived data are unsupported at this scale")  # make_plan left them out

    def inputs(self, seed: int, data_dir: Path) -> list[DataStep]:
        from studies import fashion_mnist

        return list(fashion_mnist.data_steps(data_dir, seed, self.source).values())


def _method_overrides(row: Row) -> dict[str, object]:
    """A laptop scale's method settings for `row`: METHOD_KEYS from its paper preset, and its
    auxiliary mode (none without auxiliary data)."""
    method = load_preset(row.paper_preset())["method"]
    return {**{f"method.{k}": method[k] for k in METHOD_KEYS if k in method},
            "method.aux_mode": row.aux_mode if row.aux else "none"}


def _shapes_options(spec: str, **changes) -> tuple[str, tuple[tuple[str, object], ...]]:
    """A shapes spec as `prepare shapes KIND` and its options."""
    from loaders.datasets import parse_shapes_spec

    kind, options = parse_shapes_spec(spec)
    return kind, tuple({**options, **changes}.items())


def _shapes_file(spec: str, data: Path) -> DataStep:
    """The step that writes the shapes set `spec` as a .beton (the commands read files), named by its options."""
    kind, options = _shapes_options(spec)
    name = "-".join(["shapes", kind] + [f"{k}{v}" for k, v in options])
    return DataStep("prepare", ("shapes", kind), data / f"{name}.beton", options)


def _named(step: DataStep, data: Path) -> DataStep:
    """`step` writing into `data`, its file named by what it does: two rows asking for the same data share it."""
    digest = hashlib.sha256(json.dumps([step.command, step.args, step.options], default=str).encode()).hexdigest()
    return DataStep(step.command, step.args, data / f"{step.command}-{digest[:10]}.beton", step.options, step.after)


def _parts_steps(recipe: dict, primary: str, data: Path) -> list[DataStep]:
    """Table 5 at demo scale: the parts `use` of a stratified split (`parts` sizes, seeded as the
    primary set) of the primary shapes set drawn with as many images as the parts hold, the
    `noisy` ones with `uniform-noise`, joined with `prepare concat` when more than one."""
    sizes = [int(s) for s in str(recipe["parts"]).split(",")]
    kind, options = _shapes_options(primary, n=sum(sizes))
    noisy = set(str(recipe.get("noisy", "")))
    steps = []
    for part in str(recipe["use"]):
        noise = (("uniform-noise", recipe["uniform-noise"]),) if part in noisy else ()
        steps.append(_named(DataStep("prepare", ("shapes", kind), Path(),
                                     options + (("parts", recipe["parts"]), ("part", part)) + noise), data))
    if len(steps) > 1:
        steps.append(_named(DataStep("prepare", ("concat", ",".join(str(s.out) for s in steps)), Path()), data))
    return steps


SCALES: dict[str, Scale] = {"paper": PaperScale(), "demo": ShapesScale(), "fashion-mnist": FashionMnistScale()}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise InputError(f"unknown scale {name!r}; expected one of {', '.join(SCALES)}")
    return SCALES[name]


def _ordered_rows(grid: Grid, only: tuple[str, ...]) -> list[Row]:
    """The rows to run, each after the rows it needs (Row.refs: {run:ROW}, its derived data's run)."""
    by_name = {row.name: row for row in grid.rows}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise InputError(f"study {grid.name}: no row named {', '.join(unknown)}; rows: {', '.join(by_name)}")
    ordered: list[Row] = []

    def visit(row: Row, chain: tuple[str, ...]) -> None:
        if row in ordered:
            return
        if row.name in chain:
            raise ValueError(f"study {grid.name}: rows refer to each other in a circle: {' -> '.join(chain)}")
        for ref in row.refs():
            if ref not in by_name:
                raise ValueError(f"study {grid.name}: row {row.name} refers to {{run:{ref}}}, which is not a row")
            visit(by_name[ref], chain + (row.name,))
        ordered.append(row)

    for row in grid.rows:
        if not only or row.name in only:
            visit(row, ())
    return ordered


def run_dir(out: Path, row_name: str, seed: int) -> Path:
    return out / f"{row_name}-s{seed}"


def dataset_size(spec: str) -> int | None:
    """Images in a dataset spec: a shapes spec's n, a .beton's manifest count, else the
    published size of a paper file; None when unknown."""
    if spec.startswith("shapes:"):
        from loaders.datasets import parse_shapes_spec
        from loaders.sources.shapes import DEFAULT_N

        kind, options = parse_shapes_spec(spec)
        return int(options.get("n", DEFAULT_N[(kind, "train")]))
    manifest = Path(spec + ".json")
    if manifest.is_file():
        try:
            return int(json.loads(manifest.read_text())["count"])
        except (ValueError, KeyError, TypeError):
            pass
    return published_images(spec)


def estimate_images(cfg: "TrainConfig", attacks: tuple[str, ...]) -> tuple[int | None, int | None]:
    """(images through the training step: primary + auxiliary over every epoch, test images x
    attacks of the evaluation)."""
    n, n_test = dataset_size(cfg.data.primary), dataset_size(cfg.data.test)
    train = None
    if n is not None:
        bs = cfg.data.batch_size
        steps = n // bs if cfg.data.drop_last else math.ceil(n / bs)
        primary = steps * bs if cfg.data.drop_last else n
        train = cfg.optim.epochs * (primary + (steps * cfg.data.aux_batch_size if cfg.uses_aux else 0))
    return train, None if n_test is None else n_test * len(attacks)


def make_plan(grid: Grid, scale: Scale, out: str | Path, *, seeds: tuple[int, ...] | None = None,
              data_dir: str | Path = "data", only: tuple[str, ...] = (), extra: Overrides | None = None,
              helper_seed: int | None = None) -> StudyPlan:
    """Every run of `grid` at `scale` for each seed (every row at the first seed, then the next),
    with their configs built and checked now, and the data steps they need. `extra` overrides go
    last on every run (e.g. {"runtime.device": "cuda"}). Helper rows run at `helper_seed` only (default:
    the first seed; a study split over processes passes the whole study's)."""
    out, data_dir = Path(out).resolve(), Path(data_dir).resolve()
    seeds = tuple(seeds) if seeds else scale.default_seeds
    helper_seed = seeds[0] if helper_seed is None else helper_seed
    attacks, notes = (grid.attacks, []) if grid.attacks else scale.attacks()
    runs: list[RunPlan] = []
    seen: dict[str, int] = {}  # config as JSON -> the first run's place in `runs`
    helpers: dict[str, RunPlan] = {}
    derived: dict[str, list[DataStep]] = {}  # row -> its data steps, made once for every seed
    missing: dict[str, str] = {}
    rows = _ordered_rows(grid, tuple(only))
    left_out = {row.name: why for row in rows if (why := scale.unsupported(row))}
    notes += [f"row {name} is left out at {scale.name} scale: {why}" for name, why in left_out.items()]
    rows = [row for row in rows if row.name not in left_out]
    # Seed-major: a study stopped early still has every row at its first seeds.
    for seed in [helper_seed] + [s for s in seeds if s != helper_seed]:
        for row in rows:
            if seed != helper_seed if row.helper else seed not in seeds:
                continue
            preset, configured = scale.configure(grid, row, seed, data_dir)

            def folder(m, seed=seed) -> str:  # {run:ROW}: that row's run folder (a helper's, or this seed's)
                return str(helpers[m.group(1)].dir if m.group(1) in helpers else run_dir(out, m.group(1), seed))

            configured = {k: RUN_REF.sub(folder, v) if isinstance(v, str) else v for k, v in configured.items()}
            overrides = {**configured, **(extra or {})}
            cfg = load_config(preset, overrides=overrides)
            if row.derived and row.name not in derived:
                derived[row.name] = scale.derive(row.derived, cfg, helpers.get(row.derived.run), out, data_dir)
            steps = derived.get(row.name, [])
            if steps:  # the made file in place of the row's own data (`extra` still applies last)
                made = str(steps[-1].out)
                role = row.derived.role
                overrides = {**configured, f"data.{role}": [made] if role == "aux" else made, **(extra or {})}
                cfg = load_config(preset, overrides=overrides)
            run_attacks = HELPER_ATTACKS if row.helper else attacks
            key = json.dumps(cfg.to_dict(), sort_keys=True)
            train, evaluated = estimate_images(cfg, run_attacks)
            first = seen.get(key)
            if first is not None and not set(run_attacks) <= set(runs[first].attacks):
                # A table row repeating a helper (Table 7's CIFAR-100 baseline is its pre-training):
                # the run both stand on is evaluated as the row.
                both = tuple(dict.fromkeys(run_attacks + runs[first].attacks))
                runs[first] = dataclasses.replace(runs[first], attacks=both,
                                                  eval_images=estimate_images(runs[first].config, both)[1])
            needs = tuple(dict.fromkeys((helpers[r].dir if r in helpers else run_dir(out, r, seed)).name
                                        for r in row.refs()))
            runs.append(RunPlan(row=row, seed=seed, dir=run_dir(out, row.name, seed), preset=preset,
                                overrides=tuple(overrides.items()), config=cfg, attacks=run_attacks, train_images=train,
                                eval_images=evaluated, same_as=None if first is None else runs[first].name,
                                data_steps=tuple(scale.inputs(seed, data_dir)) + tuple(steps), needs=needs))
            seen.setdefault(key, len(runs) - 1)
            if row.helper:
                helpers[row.name] = runs[-1]
    all_steps = list({step.out: step for run in runs for step in run.data_steps}.values())
    made = {str(step.out) for step in all_steps}
    for run in runs:
        for path in scale.data_files(run.config):
            if path not in made and not Path(path).exists():
                missing[path] = prepare_command(path)
    for step in all_steps:
        for path in (a for arg in step.args for a in arg.split(",") if a.endswith(".beton")):
            if path not in made and not Path(path).exists():
                missing[path] = prepare_command(path)
    shared = [r for r in runs if r.same_as]
    if shared:
        notes.append("runs with the same configuration are trained once: "
                     + "; ".join(f"{r.name} = {r.same_as}" for r in shared))
    if any(row.helper for row in rows) and len(seeds) > 1:
        notes.append(f"helper runs (pre-trainings, labelling classifiers, source models) and the data made from "
                     f"them are made once, at seed {helper_seed}; every seed's rows start from them")
    return StudyPlan(grid=grid, scale=scale.name, out=out, seeds=seeds, runs=runs,
                     missing=sorted(missing.items()), notes=notes, data_steps=all_steps, class_groups=scale.class_groups())


def missing_data_message(plan: StudyPlan) -> str:
    """The error of a study whose data is not all there: each file and the command that writes
    it, then the files the study makes itself once those are there."""
    lines = [f"study {plan.grid.name} --scale {plan.scale} needs {len(plan.missing)} data file(s) that are not "
             "there; write them with `biamat-engine prepare` (RAW/... is the dataset as published), then run "
             "the study again:"]
    for path, command in plan.missing:
        lines += [f"  missing {path}", f"    {command}"]
    todo = [step for step in plan.data_steps if not step.done]
    if todo:
        lines.append("The study then makes these itself, from its runs, with the commands shown:")
        for step in todo:
            lines += [f"  made {step.out}", f"    {step.command_line()}"]
    return "\n".join(lines)
