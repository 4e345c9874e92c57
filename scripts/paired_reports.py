"""The paired decision rule (studies/verdicts.py) on a report other than the study's own: each
run folder's REPORT (an `eval --out` file, e.g. the AutoAttack subset of
docs/fashion-mnist-study.md), for the claim ROW_A > ROW_B over the seeds both have.

    python scripts/paired_reports.py runs/fashion-mnist at-biamat at --report eval-aa100.json --attack aa
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from studies.verdicts import compare


def robust_by_seed(study: Path, row: str, report: str, attack: str) -> dict[int, float]:
    """seed -> the attack's robust accuracy in ROW-sSEED/REPORT, for each complete report."""
    found = {}
    for folder in study.glob(f"{row}-s*"):
        match = re.fullmatch(rf"{re.escape(row)}-s(\d+)", folder.name)
        path = folder / report
        if not match or not path.is_file():
            continue
        data = json.loads(path.read_text())
        if data.get("complete") and attack in data.get("attacks", {}):
            found[int(match.group(1))] = data["attacks"][attack]["robust_acc"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("row_a")
    parser.add_argument("row_b")
    parser.add_argument("--report", default="eval.json")
    parser.add_argument("--attack", default="pgd20")
    args = parser.parse_args()
    rows = {row: robust_by_seed(args.study, row, args.report, args.attack) for row in (args.row_a, args.row_b)}
    try:
        c = compare(rows, args.row_a, args.row_b)
    except ValueError as err:  # an unknown row, or no seed with both reports
        raise SystemExit(f"{err} (in {args.report}, attack {args.attack})") from None
    for row in (args.row_a, args.row_b):
        print(f"{row}: " + ", ".join(f"s{s} {100 * rows[row][s]:.1f}" for s in c.seeds))
    print(f"| {args.row_a} > {args.row_b} ({args.attack}, {args.report}) | {', '.join(map(str, c.seeds))} | "
          f"{', '.join(f'{d:+.1f}' for d in c.differences)} | {c.mean:+.1f} | {c.se:.1f} | {c.verdict} |")


if __name__ == "__main__":
    main()
