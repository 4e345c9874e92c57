"""The studies' decision rule (docs/demo-reproduction.md, docs/fashion-mnist-study.md) on a
study.csv: for a claim A > B, the per-seed differences A - B of one metric over the seeds where
both rows finished (same data, same initial weights), their mean and standard error
(sample sd / sqrt(seeds)), in percentage points; `holds` if the mean is above 2 SE, `reversed`
if below -2 SE, `not resolved` otherwise. scripts/paired_verdicts.py prints it as a table; the
demo's reference file (scripts/fashion_mnist_reference.py) records it."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from kernels.errors import InputError


def read_rows(path: Path, metric: str) -> dict[str, dict[int, float]]:
    """row -> {seed: metric} for the finished runs of a study.csv."""
    rows: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            if metric not in record:
                raise InputError(f"{path} has no column {metric!r}; columns: {', '.join(record)}")
            if record["finished"] == "1" and record[metric] != "":
                rows.setdefault(record["row"], {})[int(record["seed"])] = float(record[metric])
    return rows


def verdict(differences: list[float]) -> tuple[float, float, str]:
    """(mean, standard error, verdict) of paired differences under the 2-SE rule."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, math.nan, "not resolved (one seed)"
    se = statistics.stdev(differences) / math.sqrt(len(differences))
    if mean > 2 * se:
        return mean, se, "holds"
    if mean < -2 * se:
        return mean, se, "reversed"
    return mean, se, "not resolved"


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    seeds: list[int]
    differences: list[float]
    """A - B per seed, percentage points."""
    mean: float
    se: float
    verdict: str


def compare(rows: dict[str, dict[int, float]], a: str, b: str) -> Comparison:
    """The claim `a` > `b` judged on the seeds both finished."""
    if a not in rows or b not in rows:
        raise InputError(f"unknown or unfinished row in {a}:{b}; rows: {', '.join(sorted(rows))}")
    seeds = sorted(set(rows[a]) & set(rows[b]))
    if not seeds:
        raise InputError(f"{a} and {b} share no finished seed")
    diffs = [(rows[a][s] - rows[b][s]) * 100 for s in seeds]  # study.csv holds fractions: points
    mean, se, said = verdict(diffs)
    return Comparison(a, b, seeds, diffs, mean, se, said)
