"""Shared fixtures: hand-built training batches and a tiny training configuration.

Kept small on purpose: every module's own fixtures take precedence over these names.
"""

from __future__ import annotations

from typing import Sequence

import pytest
import torch


def pytest_collection_modifyitems(config, items) -> None:
    # `gpu` tests skip themselves on machines without CUDA (the marker's documented meaning),
    # even when a test forgets its own skipif.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def torch_single_thread():
    """Runs a test with one intra-op thread, restoring the count after.

    Tiny tensors gain nothing from a second thread, and on a shared, busy CPU OpenMP's
    barriers cost up to 100x (a 16x16 BatchNorm: 47 ms with 2 threads, 0.4 ms with 1).
    Use with `pytestmark = pytest.mark.usefixtures("torch_single_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(n_pri: int = 8, aux_sizes: Sequence[int] = (8,), aux_classes: Sequence[int] = (20,),
               num_classes: int = 10, size: int = 16, seed: int = 0, device: str = "cpu"):
    """A `Batch` of random [0, 1] images, channels_last, aux samples sorted by source."""
    from loaders.types import Batch

    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.rand(n, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)

    # The primary half is drawn first, so batches that differ only in their aux part share it.
    x_pri, y_pri = images(n_pri), torch.randint(0, num_classes, (n_pri,), generator=g)
    x_aux = images(sum(aux_sizes))
    y_aux = [torch.randint(0, c, (n,), generator=g) for n, c in zip(aux_sizes, aux_classes)]
    source = [torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(aux_sizes)]
    empty = torch.zeros(0, dtype=torch.int64)
    return Batch(
        x_pri=x_pri.to(device), y_pri=y_pri.to(device), x_aux=x_aux.to(device),
        y_aux=(torch.cat(y_aux) if y_aux else empty).to(device),
        aux_source=(torch.cat(source) if source else empty).to(device),
        aux_sizes=tuple(aux_sizes),
    )

@pytest.fixture
def batch_factory():
    """`batch_factory(n_pri=8, aux_sizes=(8,), aux_classes=(20,), ...)` -> Batch."""
    return make_batch


# A run small enough for a test: 16 px shapes, 64 training images (2 steps of 32 + 32 per
# epoch), a 2-step attack, 32 held-out images, on the CPU.
TINY_OVERRIDES = (
    "data.primary=shapes:primary?n=64&size=16",
    "data.test=shapes:primary?n=32&size=16",
    "data.aux=shapes:aux?n=64&size=16",
    "data.batch_size=32",
    "data.aux_batch_size=32",
    "model.name=wrn-10-1",
    "attack.steps=2",
    "method.warmup_epochs=1",
    "optim.epochs=3",
    "eval.n=32",
    "eval.steps=2",
    "runtime.device=cpu",
)


def tiny_config(*overrides: str):
    """The tiny run's TrainConfig with extra `section.key=value` overrides applied last."""
    from engine.config import TrainConfig, apply_overrides

    return TrainConfig.from_dict(apply_overrides({}, [*TINY_OVERRIDES, *overrides]))


@pytest.fixture(scope="session")
def tiny_train_config():
    """`tiny_train_config(*overrides)` -> TrainConfig of a seconds-long CPU run."""
    return tiny_config
