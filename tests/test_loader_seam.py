"""The loader seam: every backend takes the same arguments and `LoaderOptions`, reports the same
`DatasetInfo` for the same .beton, and the paired stream's batches carry the auxiliary split
that the engine's objectives and the reference steps both read through `Batch.aux_split`."""

from __future__ import annotations

import copy
import dataclasses
import inspect

import pytest
import torch

from loaders.backends.dali_backend import DaliStream
from loaders.backends.ffcv_backend import FfcvStream
from loaders.backends.resident import ResidentStream
from loaders.beton import BetonIndex, beton_info, read_manifest, write_beton
from loaders.datasets import make_stream
from loaders.options import LoaderOptions
from loaders.sources.shapes import make_shapes
from loaders.stream import PairedStream, split_batch
from loaders.types import Batch
from tests.fixtures_backends import BACKENDS


# Every option set to a non-default value: each backend must take all of them.
EVERY_OPTION = LoaderOptions(workers=1, kernel_impl="torch", pad=2)


@pytest.fixture(scope="module")
def aux_beton(tmp_path_factory):
    data = make_shapes("aux", "train", n=40, size=16, seed=1)
    path = tmp_path_factory.mktemp("seam") / "aux.beton"
    write_beton(path, data, format="shapes", split="train")
    return path, data


def test_every_backend_takes_the_same_arguments_and_options():
    common = ["batch_size", "device", "train", "seed", "drop_last", "rank", "world_size", "options"]
    for backend in (ResidentStream, FfcvStream, DaliStream):
        params = inspect.signature(backend).parameters
        assert list(params)[1:1 + len(common)] == common, backend.__name__
        assert params["options"].default == LoaderOptions()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_reports_the_facts_of_the_beton_manifest(aux_beton, backend):
    path, data = aux_beton
    manifest = read_manifest(path)
    stream = make_stream(str(path), backend=backend, batch_size=8, device="cpu", train=False, seed=0,
                         options=EVERY_OPTION)
    info = stream.info
    assert info == beton_info(BetonIndex(path))  # so every backend reports the same
    assert info.name == manifest["name"] == data.name == "shapes-aux"
    assert list(info.class_names) == manifest["class_names"] == data.class_names
    assert info.num_classes == 20 and info.image_size == 16
    assert info.related == manifest["related"] == data.meta["related"]
    assert info.meta["split"] == "train" and info.meta["format"] == "shapes"
    assert stream.options == EVERY_OPTION and len(stream) == 5


def test_an_in_memory_dataset_reports_what_its_beton_reports(aux_beton):
    path, data = aux_beton
    from_file = beton_info(BetonIndex(path))
    assert data.info.name == from_file.name and data.info.class_names == from_file.class_names
    assert data.info.related == from_file.related and data.info.image_size == from_file.image_size
    assert data.info.meta["kind"] == "aux"  # the generator's own facts travel too


def test_options_that_no_backend_can_use_are_refused():
    with pytest.raises(ValueError, match="workers must be >= 0.*got -1"):
        LoaderOptions(workers=-1)
    with pytest.raises(ValueError, match="pad must be non-negative, got -2"):
        LoaderOptions(pad=-2)
    with pytest.raises(TypeError):
        LoaderOptions(4)  # keyword-only: which option a number sets is never a guess


def _resident(kind: str, n: int, batch_size: int, seed: int):
    return make_stream(make_shapes(kind, n=n, size=16, seed=seed), backend="resident", batch_size=batch_size,
                       device="cpu", train=True, seed=seed, drop_last=kind == "aux")


def test_the_paired_stream_records_the_auxiliary_split_on_every_batch():
    sizes = split_batch(13, 3)
    assert sizes == [5, 4, 4]  # evenly, earlier datasets first
    paired = PairedStream(_resident("primary", 24, 8, 0),
                          [_resident("aux", 12 + i, b, i + 1) for i, b in enumerate(sizes)])
    assert paired.aux_sizes == (5, 4, 4)
    steps = 0
    for _ in range(2):  # the auxiliary streams wrap around their own, shorter epochs
        for batch in paired:
            steps += 1
            assert batch.aux_sizes == paired.aux_sizes
            assert batch.aux_split(3) == sizes == torch.bincount(batch.aux_source, minlength=3).tolist()
    assert steps == 6


def test_a_batch_built_without_sizes_counts_its_sources_empty_ones_included():
    y = torch.tensor([3, 1, 0, 2, 2])
    batch = Batch(x_pri=torch.zeros(2, 3, 4, 4), y_pri=torch.zeros(2, dtype=torch.int64),
                  x_aux=torch.zeros(5, 3, 4, 4), y_aux=y, aux_source=torch.tensor([0, 0, 1, 1, 1]))
    assert batch.aux_split(3) == [2, 3, 0]  # the third dataset sent nothing this step
    assert dataclasses.replace(batch, aux_sizes=(2, 3, 0)).aux_split(3) == [2, 3, 0]
    assert PairedStream(_resident("primary", 16, 8, 0)).aux_sizes == ()


@pytest.mark.parametrize("sizes", [(5, 3), (8, 0)])
@pytest.mark.parametrize("method", ["at", "trades"])
def test_the_engine_and_the_reference_step_split_the_aux_batch_the_same_way(method, sizes, batch_factory):
    # Both read the per-dataset sizes through Batch.aux_split: with the sizes recorded or counted
    # from aux_source, with two auxiliary heads (one of them sent nothing this step in (8, 0)),
    # the losses and statistics are the same numbers.
    # eps = 0: the batch is channels_last, whose start noise the NCHW reference draws in another
    # order (see tests/test_methods_vs_reference.py).
    from benchmarks.reference_step import REFERENCE_STEPS
    from engine.config import AttackConfig, MethodConfig
    from engine.methods import METHODS, MethodState, StepContext
    from engine.models import build

    recorded = batch_factory(aux_sizes=sizes, aux_classes=(20, 7))
    counted = dataclasses.replace(recorded, aux_sizes=())
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, (20, 7))
    method_cfg = MethodConfig(name=method, aux_mode="biamat", pi=1.0)
    attack = AttackConfig(eps=0.0, step_size=2 / 255, steps=1)
    results = []
    for step in (METHODS[method], REFERENCE_STEPS[method]):
        for batch in (recorded, counted):
            fresh = copy.deepcopy(model)  # each step moves BatchNorm statistics
            ctx = StepContext(method=method_cfg, attack=attack, in_warmup=False, trunk=fresh.features,
                              kernel_impl="torch")
            torch.manual_seed(1)
            loss, stats = step(fresh, batch, MethodState(), ctx)
            results.append((loss.detach(), stats))
    for loss, stats in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-4, atol=1e-6)
        assert [len(s) for s in stats.seen_per_class] == [20, 7]
        for seen, first in zip(stats.seen_per_class, results[0][1].seen_per_class):
            assert torch.equal(seen, first)


@pytest.fixture(scope="module")
def numbered_beton(tmp_path_factory):
    """40 images whose labels are their own indices, so a batch's labels name its samples."""
    import numpy as np

    from loaders.types import ArrayDataset

    n = 40
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(n, dtype=np.int64), [str(i) for i in range(n)], name="numbered")
    path = tmp_path_factory.mktemp("numbered") / "numbered.beton"
    write_beton(path, data, split="train")
    return str(path), n


def _numbered(path: str, backend: str, rank: int, world_size: int, batch_size: int = 4):
    return make_stream(path, backend=backend, batch_size=batch_size, device="cpu", train=True, seed=3, rank=rank,
                       world_size=world_size, options=LoaderOptions(workers=1, kernel_impl="torch"))


def _labels(batches) -> list[int]:
    return [int(v) for _, y in batches for v in y]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_gives_each_rank_a_disjoint_shard_of_each_epoch(numbered_beton, backend):
    # 40 samples over 3 ranks: 14 each, the 2 missing padded with the epoch's first samples
    # (torch's DistributedSampler rule), so only those can appear on two ranks.
    path, n = numbered_beton
    world_size = 3
    streams = [_numbered(path, backend, r, world_size) for r in range(world_size)]
    for _ in range(2):  # two shuffled epochs
        shards = [_labels(s.epoch()) for s in streams]
        assert len({len(s) for s in shards}) == 1  # as many batches on every rank
        seen = [v for s in shards for v in s]
        assert set(seen) == set(range(n)) and len(seen) - len(set(seen)) == -n % world_size
    assert _labels(streams[0].epoch()) != shards[0]  # each epoch has its own order


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_position_saved_on_two_ranks_resumes_on_one_at_the_same_point_of_the_epoch(numbered_beton, backend):
    path, n = numbered_beton
    consumed, states = [], []
    for rank in range(2):
        stream = _numbered(path, backend, rank, 2)
        batches = stream.epoch()
        consumed += _labels([next(batches), next(batches)])  # 2 of each rank's 5 batches
        states.append(stream.state_dict())
        batches.close()
    assert states[0] == states[1] == {"epoch": 0, "position": 2}
    single = _numbered(path, backend, 0, 1)
    single.load_state_dict(states[0], world_size=2)
    assert single.state_dict() == {"epoch": 0, "position": 4}  # 2 batches on 2 ranks = 4 on one
    rest = _labels(single.epoch())
    assert sorted(consumed + rest) == list(range(n))  # the epoch's other samples, each once
