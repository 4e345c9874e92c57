"""A study's plan: grid x scale x seeds -> runs, each with its config, its folder, the exact
`train` and `eval` commands that do the same, and an estimate of the images it processes.

Scales turn a grid row (the paper's terms, grids.Row) into a preset plus `--set` overrides:

- `paper`: the row's preset (the paper's data and hyperparameters), its .beton files looked
  for under --data-dir; evaluated with clean, PGD-100, CW-100 and AutoAttack as the paper.
- `demo`: the demo preset (WRN-10-2 at 16x16, 60 epochs, PGD-2 training; docs/demo-study.md)
  on the built-in shapes data, with the row's method settings (method, auxiliary mode, alpha,
  pi, beta, TRADES' high-sample loss) from its paper preset; evaluated with clean, PGD-20 and
  CW-20 on the 500 held-out images. The seed draws the data as well as the run.

The paper's datasets have no place on a laptop, so at demo scale each stands in as a shapes set
(STAND_INS; shapes `groups` keeps related classes, unrelated ones or both; see
loaders/sources/shapes.py). These are stand-ins chosen by what the paper says of each dataset,
not the paper's data.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.config import load_config, load_preset
from engine.run_dir import RunDir
from engine.study.grids import Grid, Row
from engine.study.paper_data import prepare_command, published_images

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
_RUN_REF = re.compile(r"\{run:([^}]+)\}")


@dataclass(frozen=True)
class RunPlan:
    """One run of a study: a grid row at one seed."""

    row: Row
    seed: int
    dir: Path
    preset: str
    overrides: tuple[str, ...]
    config: "TrainConfig"
    attacks: tuple[str, ...]
    train_images: int | None
    eval_images: int | None
    same_as: str | None = None
    """The run (folder name) whose config this one repeats: its results stand for both."""

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
        sets = [arg for o in self.overrides for arg in ("--set", o)]
        return shlex.join(["biamat-engine", "train", "--preset", self.preset, *sets, "--out", str(self.dir)])

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
    """(file, the command that writes it) for each data file a run needs and that is not there."""
    notes: list[str] = field(default_factory=list)

    def unique_runs(self) -> list[RunPlan]:
        """The runs that train (a run repeating another's config is not trained twice)."""
        return [r for r in self.runs if r.same_as is None]


class Scale(Protocol):
    name: str
    default_seeds: tuple[int, ...]

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, list[str]]:
        """(preset, `section.key=value` overrides) of the row's run at `seed`."""

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        """The evaluation's attacks, and notes on any the paper has that this one leaves out."""

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        """The files the run reads that must exist before it starts."""


def _autoattack_installed() -> bool:
    from engine.evaluation.autoattack_runner import import_autoattack

    try:
        import_autoattack()
        return True
    except ImportError:
        return False


@dataclass(frozen=True)
class PaperScale:
    """The paper's data and hyperparameters: each row's preset, data under --data-dir."""

    name: str = "paper"
    default_seeds: tuple[int, ...] = (0,)  # the paper reports one run per row

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, list[str]]:
        preset = row.paper_preset()
        data = load_preset(preset)["data"]

        def here(spec: str) -> str:  # the preset's file (data/NAME.beton), under --data-dir
            return str(data_dir / Path(spec).name)

        overrides = [f"data.primary={here(data['primary'])}", f"data.test={here(data['test'])}"]
        if row.aux:
            aux = [here(load_preset(row.aux_preset(a))["data"]["aux"][0]) for a in row.aux]
            overrides += [f"data.aux={','.join(aux)}", f"method.aux_mode={row.aux_mode}"]
        return preset, overrides + list(row.settings) + [f"runtime.seed={seed}"]

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        if _autoattack_installed():
            return ("clean", "pgd100", "cw100", "aa"), []
        return ("clean", "pgd100", "cw100"), [
            "AA not measured: AutoAttack is not installed (pip install 'biamat-engine[autoattack]'); "
            "a later `study` run with it installed evaluates the finished runs again"]

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        return [cfg.data.primary, cfg.data.test, *cfg.data.aux]


@dataclass(frozen=True)
class ShapesScale:
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

    def configure(self, grid: Grid, row: Row, seed: int, data_dir: Path) -> tuple[str, list[str]]:
        demo = load_preset("demo")
        classes = PRIMARY_CLASSES[row.primary]
        stand_ins = {**STAND_INS, **grid.stand_ins}
        aux = [self._spec(demo, "aux", classes=classes, seed=seed, groups=stand_ins[a]) for a in row.aux]
        method = load_preset(row.paper_preset())["method"]
        overrides = [f"data.primary={self._spec(demo, 'primary', classes=classes, seed=seed)}",
                     f"data.test={self._spec(demo, 'test', classes=classes, seed=seed)}",
                     f"data.aux={','.join(aux)}"]
        overrides += [f"method.{k}={method[k]}" for k in METHOD_KEYS if k in method]
        overrides.append(f"method.aux_mode={row.aux_mode if row.aux else 'none'}")
        return "demo", overrides + list(self.settings) + list(row.settings) + [f"runtime.seed={seed}"]

    def attacks(self) -> tuple[tuple[str, ...], list[str]]:
        return self.eval_attacks, []

    def data_files(self, cfg: "TrainConfig") -> list[str]:
        return []  # generated in memory


SCALES: dict[str, Scale] = {"paper": PaperScale(), "demo": ShapesScale()}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; expected one of {', '.join(SCALES)}")
    return SCALES[name]


def _ordered_rows(grid: Grid, only: tuple[str, ...]) -> list[Row]:
    """The rows to run, each after the rows its settings refer to with {run:ROW}."""
    by_name = {row.name: row for row in grid.rows}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise ValueError(f"study {grid.name}: no row named {', '.join(unknown)}; rows: {', '.join(by_name)}")
    ordered: list[Row] = []

    def visit(row: Row, chain: tuple[str, ...]) -> None:
        if row in ordered:
            return
        if row.name in chain:
            raise ValueError(f"study {grid.name}: rows refer to each other in a circle: {' -> '.join(chain)}")
        for ref in (m for s in row.settings for m in _RUN_REF.findall(s)):
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
        except (ValueError, KeyError):
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
              data_dir: str | Path = "data", only: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> StudyPlan:
    """Every run of `grid` at `scale` for each seed (every row at the first seed, then the next),
    with their configs built and checked now. `extra` overrides go last on every run (e.g.
    runtime.device=cuda)."""
    out, data_dir = Path(out).resolve(), Path(data_dir).resolve()
    seeds = tuple(seeds) if seeds else scale.default_seeds
    attacks, notes = scale.attacks()
    runs: list[RunPlan] = []
    seen: dict[str, str] = {}  # config as JSON -> the first run's name
    missing: dict[str, str] = {}
    # Seed-major: a study stopped early still has every row at its first seeds.
    rows = _ordered_rows(grid, tuple(only))
    for seed in seeds:
        for row in rows:
            preset, overrides = scale.configure(grid, row, seed, data_dir)
            overrides = [_RUN_REF.sub(lambda m: str(run_dir(out, m.group(1), seed)), o) for o in overrides]
            overrides += list(extra)
            cfg = load_config(preset, overrides=overrides)
            key = json.dumps(cfg.to_dict(), sort_keys=True)
            train, evaluated = estimate_images(cfg, attacks)
            runs.append(RunPlan(row=row, seed=seed, dir=run_dir(out, row.name, seed), preset=preset,
                                overrides=tuple(overrides), config=cfg, attacks=attacks, train_images=train,
                                eval_images=evaluated, same_as=seen.get(key)))
            seen.setdefault(key, runs[-1].name)
            for path in scale.data_files(cfg):
                if not Path(path).exists():
                    missing[path] = prepare_command(path)
    shared = [r for r in runs if r.same_as]
    if shared:
        notes.append("runs with the same configuration are trained once: "
                     + "; ".join(f"{r.name} = {r.same_as}" for r in shared))
    return StudyPlan(grid=grid, scale=scale.name, out=out, seeds=seeds, runs=runs,
                     missing=sorted(missing.items()), notes=notes)


def missing_data_message(plan: StudyPlan) -> str:
    """The error of a study whose data is not all there: each file and the command that writes it."""
    lines = [f"study {plan.grid.name} --scale {plan.scale} needs {len(plan.missing)} data file(s) that are not "
             "there; write them with `biamat-engine prepare` (RAW/... is the dataset as published), then run "
             "the study again:"]
    for path, command in plan.missing:
        lines += [f"  missing {path}", f"    {command}"]
    return "\n".join(lines)
