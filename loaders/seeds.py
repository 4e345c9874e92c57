"""Seeds derived from several numbers (the run's seed, an epoch, a rank, a batch): one function
for every loader backend, the distributed ranks and the evaluation's random starts, so none of
them imports another's module for it."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit generator seed that mixes all `parts` (non-negative ints) thoroughly, so
    neighbouring epochs or batches get unrelated random streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))
