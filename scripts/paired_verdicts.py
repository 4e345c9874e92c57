"""Paired, per-seed comparisons of a study's rows, with the decision rule of docs/demo-reproduction.md.

    python scripts/paired_verdicts.py runs/amplification/study.csv at-biamat:at at-biamat:at-labels

For each pair A:B it takes the runs of both rows at the seeds they share (same data, same initial
weights), the differences A - B of one metric (default pgd20), their mean and standard error
(sample sd / sqrt(seeds)), in percentage points, and says: `holds` (mean > 2 SE), `reversed` (mean < -2 SE) or
`not resolved` (the rule: studies/verdicts.py). Reads study.csv as `biamat-engine study` writes it; prints a
markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studies.verdicts import compare, read_rows, verdict

__all__ = ["read_rows", "verdict", "main"]


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
        try:
            c = compare(rows, a, b)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        print(f"| {a} > {b} | {', '.join(map(str, c.seeds))} | {', '.join(f'{d:+.1f}' for d in c.differences)} "
              f"| {c.mean:+.1f} | {c.se:.1f} | {c.verdict} |")


if __name__ == "__main__":
    main()
