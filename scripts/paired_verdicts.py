"""Paired, per-seed comparisons of a study's rows, with the decision rule of docs/demo-reproduction.md.

    python scripts/paired_verdicts.py runs/amplification/study.csv at-biamat:at at-biamat:at-labels

For each pair A:B it takes the runs of both rows at the seeds they share (same data, same initial
weights), the differences A - B of one metric (default pgd20), their mean and standard error
(sample sd / sqrt(seeds)), in percentage points, and says: `holds` (mean > 2 SE), `reversed` (mean < -2 SE) or
`not resolved`. Reads study.csv as `biamat-engine study` writes it; prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path


def read_rows(path: Path, metric: str) -> dict[str, dict[int, float]]:
    """row -> {seed: metric} for the finished runs of a study.csv."""
    rows: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            if metric not in record:
                raise SystemExit(f"{path} has no column {metric!r}; columns: {', '.join(record)}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_csv", type=Path)
    parser.add_argument("pairs", nargs="+", help="ROW_A:ROW_B, the claim being A > B")
    parser.add_argument("--metric", default="pgd20")
    args = parser.parse_args()
    rows = read_rows(args.study_csv, args.metric)
    print(f"| claim | seeds | {args.metric} differences A - B | mean | SE | verdict |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        a, _, b = pair.partition(":")
        if a not in rows or b not in rows:
            raise SystemExit(f"unknown or unfinished row in {pair!r}; rows: {', '.join(sorted(rows))}")
        seeds = sorted(set(rows[a]) & set(rows[b]))
        if not seeds:
            raise SystemExit(f"{a} and {b} share no finished seed")
        diffs = [(rows[a][s] - rows[b][s]) * 100 for s in seeds]  # study.csv holds fractions: points
        mean, se, said = verdict(diffs)
        print(f"| {a} > {b} | {', '.join(map(str, seeds))} | {', '.join(f'{d:+.1f}' for d in diffs)} "
              f"| {mean:+.1f} | {se:.1f} | {said} |")


if __name__ == "__main__":
    main()
