"""`python -m studies.job RUN.pkl`: one study run on every rank of torchrun (`study --gpus-per-run G`);
the RunPlan was pickled by the run's own job (studies/scheduler.py), so this reads only our file."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(plan_file: str) -> None:
    from studies.runner import execute

    execute(pickle.loads(Path(plan_file).read_bytes()))


if __name__ == "__main__":
    main(sys.argv[1])
