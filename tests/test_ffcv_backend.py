"""FfcvStream: byte-exact evaluation batches, seeded augmentation equal to the torch reference,
every sample once per epoch, resume mid-epoch, rank sharding. Each stream compiles FFCV's
pipeline once (~10 s on a small CPU), so the module shares two streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from kernels.augment import crop_flip_torch  # noqa: E402
from loaders.backends.ffcv_backend import FfcvStream, augment_params  # noqa: E402
from loaders.beton import read_beton, write_beton  # noqa: E402
from loaders.options import LoaderOptions  # noqa: E402
from loaders.sources import read_source  # noqa: E402
from tests import fixtures_formats as fx  # noqa: E402

N, B = 203, 32  # a partial last batch on purpose
TWO_WORKERS = LoaderOptions(workers=2)


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv")
    path, expected = fx.write_cifar10(root / "src", per_batch=N // 5 + 1, archive=True)
    out = root / "cifar10.beton"
    write_beton(out, read_source("cifar10", path, "train"))
    images, labels = expected["train"]
    return out, images, labels


@pytest.fixture(scope="module")
def train_stream(beton):
    return FfcvStream(beton[0], batch_size=B, device="cpu", train=True, seed=11, options=TWO_WORKERS)


def to_uint8(x):
    return x.permute(0, 2, 3, 1).mul(255).round().to(torch.uint8).numpy()


def test_eval_stream_is_byte_exact_and_sequential(beton):
    path, images, labels = beton
    stream = FfcvStream(path, batch_size=B, device="cpu", train=False, seed=0, options=TWO_WORKERS)
    batches = list(stream.epoch())
    assert len(batches) == len(stream) == -(-len(labels) // B)
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(to_uint8(x), images)
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), labels)
    np.testing.assert_array_equal(read_beton(path).images, images)  # the resident backend's path
    assert stream.info.num_classes == 10 and stream.info.image_size == 32


def test_train_epoch_matches_reference_and_sees_each_sample_once(beton, train_stream):
    path, images, labels = beton
    train_stream.load_state_dict({"epoch": 2, "position": 0})
    order = train_stream.batch_indices(2)
    assert sorted(order.tolist()) == list(range(len(labels)))  # every sample exactly once
    batches = list(train_stream.epoch())
    assert train_stream.state_dict() == {"epoch": 3, "position": 0}
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    offsets, flips = augment_params(11, 2, order)
    expected = crop_flip_torch(torch.from_numpy(images[order.astype(np.int64)]), torch.from_numpy(offsets),
                               torch.from_numpy(flips))
    assert torch.equal(x, expected)  # the seeded crop/flip inside FFCV == the torch reference
    np.testing.assert_array_equal(y.numpy(), labels[order.astype(np.int64)])
    assert not np.array_equal(order, train_stream.batch_indices(3))  # reshuffled per epoch


def test_resume_mid_epoch_gives_the_remaining_batches(train_stream):
    train_stream.load_state_dict({"epoch": 0, "position": 0})
    full = []
    for x, y in train_stream.epoch():
        full.append((x, y, train_stream.state_dict()))
    assert full[2][2] == {"epoch": 0, "position": 3}  # position advances before each yield
    train_stream.load_state_dict(full[2][2])
    rest = list(train_stream.epoch())
    assert len(rest) == len(full) - 3
    for (x, y, _), (x2, y2) in zip(full[3:], rest):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_rank_shards_are_disjoint_and_cover_the_data(beton, train_stream):
    n = len(beton[2])
    shards = []
    for rank in range(2):
        train_stream.rank, train_stream.world_size = rank, 2
        train_stream.samples_per_rank = -(-n // 2)
        shards.append(train_stream.batch_indices(0))
    train_stream.rank, train_stream.world_size, train_stream.samples_per_rank = 0, 1, n
    assert len(shards[0]) == len(shards[1]) == -(-n // 2)
    assert set(shards[0]) | set(shards[1]) == set(range(n))


def test_augment_params_are_in_range_and_deterministic():
    ids = np.arange(1000)
    offsets, flips = augment_params(3, 0, ids)
    assert offsets.min() == 0 and offsets.max() == 8 and 0.4 < flips.mean() < 0.6
    np.testing.assert_array_equal(offsets, augment_params(3, 0, ids)[0])
    assert not np.array_equal(offsets, augment_params(3, 1, ids)[0])


def test_bad_arguments_name_the_file(beton, tmp_path):
    with pytest.raises(ValueError, match="order must be one of"):
        FfcvStream(beton[0], batch_size=8, device="cpu", train=True, seed=0, order="zigzag")
    with pytest.raises(FileNotFoundError, match=r"missing\.beton: no such \.beton file"):
        FfcvStream(tmp_path / "missing.beton", batch_size=8, device="cpu", train=True, seed=0)
