"""A study's results as the paper's table: study.md (this engine's numbers, mean +- sd over
seeds, beside the paper's published ones, and the confidence selection's related vs unrelated
routing) and study.csv (one line per run), both written atomically.

Runs are read from their folders, so the table can be written again at any time, with whatever
is finished (a run not finished yet shows `-`).
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from engine.evaluation.report import read_eval_report
from engine.outputs import claim_files, publish_file
from engine.run_dir import RunDir, read_json_lines
from studies.grids import DATASET_NAMES, Row
from studies.plan import RunPlan, StudyPlan

PAPER_METRICS = ("clean", "pgd100", "cw100", "aa", "fgsm", "error")
"""The paper's metrics, in table order (`error`: Table 5's test error, 100 - clean); `M_sd` beside
one is its std over runs, shown as `M ± M_sd`."""
MISSING = "-"


def paper_numbers() -> dict[str, dict[str, dict[str, float]]]:
    """paper_numbers.toml: {table: {row: {metric: accuracy %}}}."""
    text = (resources.files("studies") / "paper_numbers.toml").read_text()
    return tomllib.loads(text)


def paper_row(key: str | None, numbers: dict | None = None) -> dict[str, float]:
    """The published numbers of `TABLE.ROW` ({} when the paper has none)."""
    if key is None:
        return {}
    table, _, row = key.partition(".")
    return (numbers or paper_numbers()).get(table, {}).get(row, {})


def metric_label(name: str) -> str:
    """`pgd100` -> `PGD-100`, `aa` -> `AA`, `fgsm` -> `FGSM`, `clean` -> `clean`."""
    match = re.fullmatch(r"([a-z]+)(\d+)", name)
    if match:
        return f"{match.group(1).upper()}-{match.group(2)}"
    return {"aa": "AA", "fgsm": "FGSM"}.get(name, name)


@dataclass
class RunResult:
    run: RunPlan
    accuracy: dict[str, float] = field(default_factory=dict)
    """Metric -> accuracy in [0, 1], for a finished evaluation; empty otherwise."""
    selection: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Class group (related / unrelated) -> (seen, high) at the last routed epoch, over every
    auxiliary dataset; empty for a run without the confidence selection."""
    train_seconds: float | None = None
    """Wall time of its epochs (with their per-epoch held-out check), from metrics.jsonl."""
    eval_seconds: float | None = None

    @property
    def done(self) -> bool:
        return bool(self.accuracy)


def read_result(run: RunPlan, groups: dict[str, str] | None = None) -> RunResult:
    """`groups` (class name -> related / unrelated) in place of the data's related flags, where
    the scale declares them (StudyPlan.class_groups)."""
    from studies.analysis.read import class_tables, load_run

    files = RunDir(run.results_dir)
    result = RunResult(run)
    epochs = read_json_lines(files.metrics)
    if epochs:
        result.train_seconds = sum(e.get("seconds", 0.0) + e.get("eval_seconds", 0.0) for e in epochs)
    if files.eval_report.is_file():
        report = read_eval_report(files.eval_report)
        result.eval_seconds = report.get("seconds")
        if report.get("complete"):
            result.accuracy = {"clean": report["clean_acc"],
                               **{name: a["robust_acc"] for name, a in report.get("attacks", {}).items()}}
    if files.selection.is_file() and files.metrics.is_file():
        for table in class_tables(load_run(files.root), groups, groups_label="the scale's groups"):
            for group in table.groups:
                seen, high = result.selection.get(group.group, (0, 0))
                result.selection[group.group] = (seen + group.seen, high + group.high)
    return result


def mean_sd(values: list[float]) -> str:
    """Percentages as `52.31 ± 1.20` (sample sd over seeds), one value as it is, none as `-`."""
    if not values:
        return MISSING
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def _ratio(counts: tuple[int, int] | None) -> float | None:
    return counts[1] / counts[0] if counts and counts[0] else None


@dataclass
class StudyTable:
    """The study's results, read from its run folders."""

    plan: StudyPlan
    results: list[RunResult]

    @classmethod
    def read(cls, plan: StudyPlan) -> "StudyTable":
        return cls(plan, [read_result(run, plan.class_groups) for run in plan.runs])

    @property
    def metrics(self) -> tuple[str, ...]:
        rows = [run for run in self.plan.runs if not run.row.helper]  # helpers are evaluated clean only
        return rows[0].attacks if rows else ()

    def rows(self) -> list[tuple[Row, list[RunResult]]]:
        order: dict[str, tuple[Row, list[RunResult]]] = {}
        for result in self.results:
            order.setdefault(result.run.row.name, (result.run.row, []))[1].append(result)
        return list(order.values())

    def paper_metrics(self) -> tuple[str, ...]:
        numbers = paper_numbers()
        have = {m for row, _ in self.rows() for m in paper_row(self.plan.grid.paper_key(row), numbers)}
        return tuple(m for m in PAPER_METRICS if m in have)

    # -- study.md --------------------------------------------------------------------------------
    def markdown(self, facts: dict[str, str] | None = None) -> str:
        grid, plan = self.plan.grid, self.plan
        lines = [f"# Study `{grid.name}` at {plan.scale} scale", "", grid.title, "", grid.about, ""]
        if plan.scale != "paper":
            data = plan.scale if plan.scale in _STAND_IN_NOTES else "demo"  # a smaller shapes scale is the demo's
            own = "".join(f" This study stands {DATASET_NAMES[d]} in by {_GROUP_WORDS[data][g]} (groups={g})."
                          for d, g in grid.stand_ins.items())
            lines += [_STAND_IN_NOTES[data] + own, ""]
        info = {"seeds": ", ".join(map(str, plan.seeds)), "runs": str(len(plan.runs)), **(facts or {})}
        lines += [f"- {k}: {v}" for k, v in info.items()] + [""]
        lines += ["## Accuracy (%)", "", self._results_table(), ""]
        helpers = self._helpers_table()
        if helpers:
            lines += ["## Helper runs", "",
                      "Runs the table's rows start from or make their data from (a pre-training, the classifier "
                      "that pseudo-labels, the model a robust dataset is made from); trained once and evaluated "
                      "clean only, on their own test data; not lines of the paper's table.", "", helpers, ""]
        made = [step for step in plan.data_steps]
        if made:
            lines += ["## Data made by the study", ""]
            lines += [f"- `{step.out}` ({'made' if step.done else 'not made yet'}): `{step.command_line()}`"
                      for step in made] + [""]
        selection = self._selection_table()
        if selection:
            lines += ["## Auxiliary samples routed high at the end of training", "",
                      "The confidence selection's last routed epoch, per run: the share of the auxiliary "
                      "samples of the classes related to the primary classes (at demo scale the primary's shapes in "
                      "another domain, at fashion-mnist scale Fashion-MNIST's other classes) and of the unrelated "
                      "classes (textures) that were routed high (own labels, own "
                      "head) rather than low (uniform target). The paper's Table 14 reads the same on ImageNet: "
                      "related classes 50-85%, others 29%.", "", selection, ""]
        lines += ["## Runs", "", self._runs_table(), ""]
        if plan.notes:
            lines += ["## Notes", ""] + [f"- {note}" for note in plan.notes] + [""]
        return "\n".join(lines)

    def _results_table(self) -> str:
        grid, metrics, paper = self.plan.grid, self.metrics, self.paper_metrics()
        numbers = paper_numbers()
        header = [*grid.columns, "seeds", *(metric_label(m) for m in metrics),
                  *(f"paper {metric_label(m)}" for m in paper)]
        body = []
        for row, results in self.rows():
            if row.helper:
                continue
            done = [r for r in results if r.done]
            published = paper_row(grid.paper_key(row), numbers)
            body.append([*row.cells, f"{len(done)}/{len(results)}",
                         *(mean_sd([r.accuracy[m] for r in done if m in r.accuracy]) for m in metrics),
                         *(_published(published, m) for m in paper)])
        return _markdown_table(header, body)

    def _helpers_table(self) -> str:
        body = [[r.run.name, " / ".join(r.run.row.cells), mean_sd([r.accuracy["clean"]] if r.done else [])]
                for r in self.results if r.run.row.helper]
        return _markdown_table(["run", "what", "clean"], body) if body else ""

    def _selection_table(self) -> str:
        body = []
        for row, results in self.rows():
            routed = [r for r in results if r.selection]
            if not routed:
                continue
            cells = []
            for group in ("related", "unrelated"):
                ratios = [x for x in (_ratio(r.selection.get(group)) for r in routed) if x is not None]
                per_seed = ", ".join(_count(r.selection.get(group)) for r in routed)
                cells.append(f"{mean_sd(ratios)} ({per_seed})" if ratios else MISSING)
            body.append([" / ".join(row.cells), ", ".join(str(r.run.seed) for r in routed), *cells])
        if not body:
            return ""
        return _markdown_table(["row", "seeds", "related routed high % (high/seen per seed)",
                                "unrelated routed high % (high/seen per seed)"], body)

    def _runs_table(self) -> str:
        body = [[r.run.name, " / ".join(r.run.row.cells), str(r.run.seed),
                 ("finished" if r.done else "not finished") + (f" (same run as {r.run.same_as})" if r.run.same_as else ""),
                 f"{r.run.results_dir.name}/", _seconds(r.train_seconds), _seconds(r.eval_seconds)]
                for r in self.results]
        return _markdown_table(["run", "row", "seed", "status", "folder", "train s", "eval s"], body)

    # -- study.csv -------------------------------------------------------------------------------
    def csv(self) -> str:
        grid, metrics, paper = self.plan.grid, self.metrics, self.paper_metrics()
        numbers = paper_numbers()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["study", "scale", "row", *grid.columns, "seed", "finished", "run_dir", *metrics,
                         "related_high_ratio", "unrelated_high_ratio", *(f"paper_{m}" for m in paper)])
        for r in self.results:
            published = paper_row(grid.paper_key(r.run.row), numbers)
            writer.writerow([grid.name, self.plan.scale, r.run.row.name, *r.run.row.cells, r.run.seed,
                             int(r.done), str(r.run.results_dir),
                             *(_plain(r.accuracy.get(m)) for m in metrics),
                             _plain(_ratio(r.selection.get("related"))), _plain(_ratio(r.selection.get("unrelated"))),
                             *(_plain(published.get(m)) for m in paper)])
        return buffer.getvalue()

    @staticmethod
    def paths(plan: StudyPlan) -> tuple[Path, Path]:
        return plan.out / "study.md", plan.out / "study.csv"

    @staticmethod
    def claim(plan: StudyPlan) -> None:
        """The study rewrites its own study.md and study.csv on every pass (its resume rule), but
        never files of those names that it did not write (engine/outputs.py): checked before any run."""
        for path in StudyTable.paths(plan):
            claim_files([path], "study", overwrite=True, option="--out folder (or move the file away)")

    def write(self, facts: dict[str, str] | None = None) -> tuple[Path, Path]:
        md, table_csv = self.paths(self.plan)
        self.claim(self.plan)
        publish_file(md, "study", lambda tmp: Path(tmp).write_text(self.markdown(facts)))
        publish_file(table_csv, "study", lambda tmp: Path(tmp).write_text(self.csv()))
        return md, table_csv


# What each laptop scale's data is, in place of the paper's (studies/plan.py STAND_INS).
_STAND_IN_NOTES = {
    "demo": (
        "Scale: the demo preset (engine/presets/demo.toml) on the built-in shapes data, not the paper's "
        "data. The paper's datasets are stood in for by shapes sets chosen by what the paper says of each "
        "(studies/plan.py STAND_INS): SVHN by unrelated textures only; CIFAR-100, Places365 and "
        "ImgNet900 by both related and unrelated classes; ImageNet by related classes only (the primary's "
        "shapes in another domain); CIFAR-100 and ImgNet100 as primary data by 16 shape classes instead of "
        "10. The paper's numbers are beside ours for the direction of each effect, not for their size."),
    "fashion-mnist": (
        "Scale: the fashion-mnist preset (engine/presets/fashion-mnist.toml) on real images, not the paper's "
        "data (studies/fashion_mnist.py): CIFAR-10 is stood in for by Fashion-MNIST's classes 0-4 (60 training "
        "images each, 300 test images), and the paper's auxiliary datasets by what the paper says of each "
        "(studies/plan.py STAND_INS): SVHN by grey textures only (an unrelated domain); CIFAR-100 and "
        "Places365 by both Fashion-MNIST's other five classes and the textures; ImageNet by Fashion-MNIST's "
        "other five classes only (same source, other classes). The paper's numbers are beside ours for the "
        "direction of each effect, not for their size."),
}
_GROUP_WORDS = {
    "demo": {"all": "related and unrelated classes", "related": "related classes only",
             "unrelated": "unrelated textures only"},
    "fashion-mnist": {"all": "Fashion-MNIST's other classes and the textures",
                      "related": "Fashion-MNIST's other classes only", "unrelated": "the textures only"},
}


def _published(numbers: dict[str, float], metric: str) -> str:
    if metric not in numbers:
        return MISSING
    sd = numbers.get(f"{metric}_sd")
    return f"{numbers[metric]:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def _seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f}"


def _count(counts: tuple[int, int] | None) -> str:
    return f"{counts[1]}/{counts[0]}" if counts else MISSING


def _plain(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)
