"""`python -m studies.job RUN.pkl`: one study run on every rank of torchrun (`study --gpus-per-run G`);
the RunPlan was pickled by the run's own job (studies/scheduler.py), so this reads only our file."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(plan_file: str) -> None:
    import torch.distributed as dist

    from engine.distributed import init_from_env
    from studies.runner import execute

    run = pickle.loads(Path(plan_file).read_bytes())
    init_from_env(run.config.runtime.device)  # as `train` and `eval` do under torchrun
    # Every rank looks at the run folder (resume or start) before rank 0 writes into it.
    dist.barrier()
    try:
        execute(run)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
