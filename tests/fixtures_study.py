"""A test-only study scale: the demo's grids on 8x8 shapes, a few dozen images, two epochs of
the smallest WideResNet; a run takes about a second."""

from __future__ import annotations

import pytest

from studies.plan import SCALES, ShapesScale

TINY = ShapesScale(
    name="tiny", default_seeds=(0,),
    data={"primary": {"n": 24, "size": 8}, "test": {"n": 16, "size": 8}, "aux": {"n": 48, "size": 8}},
    settings=("model.name=wrn-10-1", "optim.epochs=2", "method.warmup_epochs=1", "data.batch_size=8",
              "data.aux_batch_size=8", "runtime.kernels=torch", "runtime.device=cpu", "eval.n=16",
              "eval.steps=1", "attack.steps=1"),
    eval_attacks=("clean", "pgd2"),
)


@pytest.fixture
def tiny(monkeypatch):
    """TINY registered as `--scale tiny` for the test's duration."""
    monkeypatch.setitem(SCALES, "tiny", TINY)
    return TINY
