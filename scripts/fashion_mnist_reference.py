"""Writes studies/fashion_mnist_reference.json, what `biamat-engine demo` prints beside its own
run: the fashion-mnist study's per-seed clean and PGD-20 accuracies of plain AT and AT+BiaMAT
(the demo's two arms), the rule's verdict on AT+BiaMAT > AT, and the revision and machine that
measured them.

    python scripts/fashion_mnist_reference.py runs/fashion-mnist/study.csv --revision 5de6b45 \\
        --machine "2-core AMD EPYC, one torch thread"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studies.demo import REFERENCE
from studies.verdicts import compare, read_rows

ARM_ROWS = {"at": "at", "biamat": "at-biamat"}
"""The demo's arms, by the amplification grid's row names."""


def reference(study_csv: Path, revision: str, machine: str) -> dict:
    pgd, clean = read_rows(study_csv, "pgd20"), read_rows(study_csv, "clean")
    f1 = compare(pgd, ARM_ROWS["biamat"], ARM_ROWS["at"])
    return {"study": "biamat-engine study amplification --scale fashion-mnist", "revision": revision,
            "machine": machine, "seeds": f1.seeds,
            "verdict": f"AT+BiaMAT > AT by the paired 2-SE rule: {f1.verdict} "
                       f"(mean {f1.mean:+.1f}, SE {f1.se:.1f} points)",
            "arms": {arm: {"row": row, "clean": [clean[row][s] for s in f1.seeds],
                           "pgd20": [pgd[row][s] for s in f1.seeds]} for arm, row in ARM_ROWS.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_csv", type=Path)
    parser.add_argument("--revision", required=True, help="the revision the study's runs were trained at")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args()
    args.out.write_text(json.dumps(reference(args.study_csv, args.revision, args.machine), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
