"""A run directory's records turned into the rows the report and the figures show: the per-epoch
curves (metrics.jsonl), the routing of auxiliary samples (the paper's Fig. 3), the per-class
high-confidence ratios (its Table 14, from selection.jsonl) and one row of its Table 2 layout
(eval.json and config.toml)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from engine.evaluation.report import number_or_null, read_eval_report
from engine.run_dir import RunDir, read_json, read_json_lines
from kernels.errors import InputError
from loaders.json_values import whole_number

if TYPE_CHECKING:
    from engine.config import TrainConfig

# The curves of the training-curves figure, by panel.
LOSS_TERMS = ("loss_pri", "loss_high", "loss_low")
ACCURACIES = ("clean_acc", "robust_acc")
# How many classes Table 14 names at each end of the ranking.
RANKED = 10
# The group of a class a --groups file does not name.
UNGROUPED = "(not in the groups file)"


@dataclass
class Run:
    """One run directory's records, read whole before anything is written."""

    root: Path
    name: str
    config: "TrainConfig"
    metrics: list[dict]
    selection: list[dict]
    eval_report: Optional[dict]
    slug: str = ""
    """The run's name as a part of file names, distinct among the runs analysed together (`load_runs`)."""

    @property
    def routed(self) -> bool:
        """Whether the confidence selection ran (it writes selection.jsonl from the first epoch
        after warm-up; plain AT, `labels`, `uniform` and warm-up-only runs have none)."""
        return bool(self.selection)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metrics.jsonl field; a missing or null value is NaN, so a
        curve has a gap there (omega during warm-up) instead of a false zero."""
        epochs = [r["epoch"] for r in self.metrics]
        values = [float(r[key]) if r.get(key) is not None else math.nan for r in self.metrics]
        return epochs, values


@dataclass
class OmegaGateRow:
    """One epoch of a method.omega_when = accuracy run while its warm-up lasted."""

    epoch: int
    heldout_acc: float
    heldout_n: int
    ended: bool
    """Whether the warm-up ended at this epoch's end (omega fixed on the next step)."""


def omega_gate_rows(run: Run) -> list[OmegaGateRow]:
    """The held-out checks of the epochs before omega was fixed (empty for omega_when = warmup)."""
    return [OmegaGateRow(r["epoch"], float(r["omega_heldout_acc"]), int(r.get("omega_heldout_n") or 0),
                         r.get("omega_warmup_ended") == r["epoch"])
            for r in run.metrics if r.get("omega_heldout_acc") is not None]


def load_run(path: str | Path) -> Run:
    """Reads a run directory, failing with the folder's name and what is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if not path.is_dir():
        raise InputError(f"{path} is a file, not a run directory: pass the folder `train --out` wrote")
    run_dir = RunDir(path)
    missing = [p.name for p in (run_dir.config, run_dir.metrics) if not p.is_file()]
    if missing:
        raise InputError(f"{path} is not a run directory of biamat-engine: it holds no {' and no '.join(missing)} "
                         "(pass the folder `train --out` wrote)")
    metrics = _checked(read_json_lines(run_dir.metrics), run_dir.metrics, _METRICS_FIELDS)
    if not metrics:
        raise InputError(f"{run_dir.metrics} holds no epoch yet: analyse the run after its first epoch")
    eval_report = read_eval_report(run_dir.eval_report) if run_dir.eval_report.is_file() else None
    selection = _checked(read_json_lines(run_dir.selection), run_dir.selection, _SELECTION_FIELDS)
    for number, record in enumerate(selection, 1):
        if not len(record["class_names"]) == len(record["seen"]) == len(record["high"]):
            raise InputError(f"{run_dir.selection}, record {number}: class_names, seen and high differ in length; "
                             "the file was edited or damaged: fix or remove that line")
    return Run(root=path, name=path.resolve().name, config=run_dir.read_config(), metrics=metrics,
               selection=selection, eval_report=eval_report)


# What the analysis reads of each record, by type: a record an edit or another tool damaged is
# named here, by file, record and key, instead of failing deep inside a figure.
def _ints(v) -> bool:
    return isinstance(v, list) and all(whole_number(x) and x >= 0 for x in v)


_METRICS_FIELDS = {"epoch": (whole_number, "a whole number"),
                   **{k: (number_or_null, "a number or null") for k in ("lr", "omega", *LOSS_TERMS, *ACCURACIES)}}
_SELECTION_FIELDS = {"epoch": (whole_number, "a whole number"), "aux": (whole_number, "a whole number"),
                     "class_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                                     "a list of names"),
                     "seen": (_ints, "a list of counts"), "high": (_ints, "a list of counts")}
_REQUIRED = {"epoch", "aux", "class_names", "seen", "high"}


def _checked(records: list[dict], path: Path, fields: dict) -> list[dict]:
    for number, record in enumerate(records, 1):
        for key, (ok, expected) in fields.items():
            if key not in record and key not in _REQUIRED:
                continue
            if key not in record or not ok(record[key]):
                found = repr(record.get(key))[:40] if key in record else "missing"
                raise InputError(f"{path}, record {number}: {key!r} is {found}, expected {expected}; the file was "
                                 "edited or damaged: fix or remove that line")
    return records


def load_runs(paths: list[Path]) -> list[Run]:
    """Every run, named by its folder; runs whose folders share a name are named by their path.
    Each gets a distinct `slug` for its file names: `x y` and `x-y` slug alike, so the later one
    takes a number."""
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.root)
    taken: set[str] = set()
    for run in runs:
        base = run.slug = slug(run.name)
        number = 2
        while run.slug in taken:
            run.slug, number = f"{base}-{number}", number + 1
        taken.add(run.slug)
    return runs


def slug(name: str) -> str:
    """A run's name as a part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def read_groups(path: str | Path) -> dict[str, str]:
    """A --groups file: a JSON object {class_name: group}."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"{path}: expected a JSON object mapping class names to group names, "
                         'e.g. {"circle": "related", "stripes": "unrelated"}')
    return data


# -- Table 14: which auxiliary classes the selection routes high ---------------------------------

@dataclass
class Counts:
    """Auxiliary samples seen and routed high (one class, or a group of classes)."""

    seen: int
    high: int

    @property
    def ratio(self) -> float:
        return self.high / self.seen if self.seen else math.nan


@dataclass
class ClassRatio(Counts):
    name: str
    group: Optional[str]


@dataclass
class GroupRatio(Counts):
    group: str
    classes: int


@dataclass
class ClassTable:
    """One auxiliary dataset at the last routed epoch: every class seen, most often high first."""

    epoch: int
    aux: int
    aux_name: str
    ranked: list[ClassRatio]
    unseen: list[str]
    groups: list[GroupRatio] = field(default_factory=list)
    grouping: Optional[str] = None  # "--groups FILE" or "related flags", None without groups

    @property
    def top(self) -> list[ClassRatio]:
        return self.ranked[:RANKED]

    @property
    def bottom(self) -> list[ClassRatio]:
        return self.ranked[-RANKED:][::-1]


def class_tables(run: Run, groups: Optional[dict[str, str]] = None,
                 groups_label: str = "--groups") -> list[ClassTable]:
    """Table 14 for each auxiliary dataset of the run's last routed epoch (the counts of that
    epoch alone). Groups come from `groups` when given, else from the records' `related` flags;
    a group's ratio pools its classes' samples (sum of high / sum of seen)."""
    if not run.routed:
        return []
    last = max(r["epoch"] for r in run.selection)
    tables = []
    for record in sorted((r for r in run.selection if r["epoch"] == last), key=lambda r: r["aux"]):
        names, seen, high = record["class_names"], record["seen"], record["high"]
        related = record.get("related")
        if groups is not None:
            group_of, grouping = [groups.get(n, UNGROUPED) for n in names], groups_label
        elif related is not None:
            group_of, grouping = ["related" if r else "unrelated" for r in related], "related flags"
        else:
            group_of, grouping = [None] * len(names), None
        classes = [ClassRatio(seen=int(s), high=int(h), name=n, group=g)
                   for n, s, h, g in zip(names, seen, high, group_of)]
        # Ties keep the dataset's class order, so the table is the same on every read.
        ranked = sorted((c for c in classes if c.seen), key=lambda c: -c.ratio)
        table = ClassTable(epoch=last, aux=record["aux"], aux_name=record.get("aux_name") or f"aux {record['aux']}",
                           ranked=ranked, unseen=[c.name for c in classes if not c.seen], grouping=grouping)
        if grouping is not None:
            order = list(dict.fromkeys(c.group for c in classes))
            table.groups = [GroupRatio(group=g, classes=sum(1 for c in classes if c.group == g),
                                       seen=sum(c.seen for c in classes if c.group == g),
                                       high=sum(c.high for c in classes if c.group == g)) for g in order]
        tables.append(table)
    return tables


# -- Table 2 layout: one row per run --------------------------------------------------------------

COMPARISON_HEADER = ("run", "method", "aux mode", "auxiliary data", "clean", "PGD-K", "CW-K", "AA")
MISSING = "-"


def percent(value: Optional[float]) -> str:
    """An accuracy in [0, 1] as the paper prints it (52.31); '-' when absent."""
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _aux_name(spec: str) -> str:
    # A built-in source (`shapes:aux?n=64`) by its source and split, a file by its name.
    if ":" in spec and not Path(spec.split("?")[0]).suffix:
        return spec.split("?")[0]
    return Path(spec).name


def _attack(attacks: dict[str, Any], family: str) -> tuple[Optional[str], Optional[float]]:
    """The strongest attack of a family (`pgd`, `cw`) in an eval report: (name, robust_acc)."""
    found = []
    for name, entry in attacks.items():
        match = re.fullmatch(rf"{family}(\d+)", name)
        if match and isinstance(entry, dict) and entry.get("robust_acc") is not None:
            found.append((int(match.group(1)), name, entry["robust_acc"]))
    if not found:
        return None, None
    _, name, acc = max(found)
    return name, acc


def comparison_rows(runs: list[Run]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(header, rows) in the paper's Table 2 layout. PGD-K and CW-K name their K in the header
    when every run was evaluated with the same one, else in each cell."""
    picks = {family: [_attack((r.eval_report or {}).get("attacks") or {}, family) for r in runs]
             for family in ("pgd", "cw")}
    header = list(COMPARISON_HEADER)
    columns = {}
    for family, column in (("pgd", 5), ("cw", 6)):
        names = {name for name, _ in picks[family] if name}
        shared = len(names) == 1
        if shared:
            steps = names.pop()[len(family):]
            header[column] = f"{family.upper()}-{steps}"
        columns[family] = [percent(acc) if shared or name is None else f"{percent(acc)} ({name})"
                           for name, acc in picks[family]]
    rows = []
    for i, run in enumerate(runs):
        cfg, report = run.config, run.eval_report or {}
        aux = ", ".join(_aux_name(s) for s in cfg.data.aux) if cfg.uses_aux else MISSING
        aa = ((report.get("attacks") or {}).get("aa") or {}).get("robust_acc")
        rows.append((run.name, cfg.method.name.upper(), cfg.method.aux_mode if cfg.uses_aux else "none", aux,
                     percent(report.get("clean_acc")), columns["pgd"][i], columns["cw"][i], percent(aa)))
    return tuple(header), rows
