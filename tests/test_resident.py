"""The resident backend: coverage, sharding, determinism, resume, augmentation, pairing."""

import numpy as np
import pytest
import torch

from loaders.backends.resident import ResidentStream
from loaders.datasets import make_stream
from loaders.options import LoaderOptions
from loaders.sources.shapes import make_shapes
from loaders.stream import PairedStream
from loaders.types import ArrayDataset


def indexed_dataset(n: int, size: int = 16, classes: int = 5) -> ArrayDataset:
    """Image i is a flat colour that encodes i (red = i % 256, green = i // 256), so a batch
    tells which samples it holds even after a padded crop (the centre pixel never reaches the
    padding) and a flip."""
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    images[..., 2] = 7
    return ArrayDataset(images, np.arange(n) % classes, [str(c) for c in range(classes)], "indexed")


def sample_ids(x: torch.Tensor) -> list[int]:
    c = x.shape[-1] // 2
    centre = torch.round(x[:, :, c, c] * 255).long()  # (B, 3)
    return (centre[:, 0] + 256 * centre[:, 1]).tolist()


def run_epoch(stream) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in stream.epoch()]


def epoch_ids(stream) -> list[int]:
    return [i for x, _ in run_epoch(stream) for i in sample_ids(x)]


def stream(ds, **kw):
    options = dict(batch_size=16, device="cpu", train=True, seed=3)
    options.update(kw)
    return ResidentStream(ds, **options)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(train, drop_last):
    n = 103
    s = stream(indexed_dataset(n), train=train, drop_last=drop_last)
    assert len(s) == (6 if drop_last else 7)
    for _ in range(2):
        ids = epoch_ids(s)
        assert len(set(ids)) == len(ids)  # never twice
        assert len(ids) == ((n // 16) * 16 if drop_last else n)
        assert set(ids) <= set(range(n))
    if not train:
        assert ids == list(range(len(ids)))  # evaluation visits the data in order
    assert s.state_dict() == {"epoch": 2, "position": 0}


@pytest.mark.parametrize("n,drop_last", [(100, False), (101, True), (101, False)])
def test_two_ranks_get_disjoint_equal_shards(n, drop_last):
    ds = indexed_dataset(n)
    ranks = [stream(ds, batch_size=8, rank=r, world_size=2, drop_last=drop_last) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    shards = [epoch_ids(r) for r in ranks]
    assert len(shards[0]) == len(shards[1])
    together = shards[0] + shards[1]
    if n % 2 == 0 or drop_last:
        assert len(set(together)) == len(together)  # disjoint
        per_rank = (n // 2) // 8 * 8 if drop_last else n // 2  # drop_last: whole batches only
        assert len(together) == 2 * per_rank
    else:
        # Padding with the permutation's first sample: everything seen, exactly one twice.
        assert set(together) == set(range(n)) and len(together) == n + 1
    if not drop_last:
        assert set(together) == set(range(n))


def test_same_seed_same_batches_other_epoch_or_seed_other_order():
    ds = make_shapes("primary", n=96, size=16)
    a, b, c = stream(ds), stream(ds), stream(ds, seed=4)
    epoch0_a, epoch0_b, epoch0_c = run_epoch(a), run_epoch(b), run_epoch(c)
    for (xa, ya), (xb, yb) in zip(epoch0_a, epoch0_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ids = indexed_dataset(96)
    s = stream(ids)
    first, second = epoch_ids(s), epoch_ids(s)
    assert first != second and sorted(first) == sorted(second)
    assert epoch_ids(stream(ids, seed=4)) != first
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(epoch0_a, epoch0_c))


@pytest.mark.parametrize("train", [True, False])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(train):
    ds = make_shapes("primary", n=100, size=16)
    whole = stream(ds, train=train)
    run_epoch(whole)
    reference = run_epoch(whole)  # epoch 1, uninterrupted

    interrupted = stream(ds, train=train)
    run_epoch(interrupted)
    it = interrupted.epoch()
    for _ in range(3):
        next(it)
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "position": 3}

    resumed = stream(ds, train=train)
    resumed.load_state_dict(state)
    rest = run_epoch(resumed)
    assert len(rest) == len(reference) - 3
    for (xr, yr), (xw, yw) in zip(rest, reference[3:]):
        assert torch.equal(xr, xw) and torch.equal(yr, yw)
    assert resumed.state_dict() == {"epoch": 2, "position": 0}


def test_state_at_end_of_epoch_moves_on_to_the_next():
    s = stream(indexed_dataset(40))
    s.load_state_dict({"epoch": 0, "position": len(s)})
    assert run_epoch(s) == [] and s.state_dict() == {"epoch": 1, "position": 0}
    with pytest.raises(ValueError, match="batches per epoch"):
        s.load_state_dict({"epoch": 0, "position": len(s) + 1})


def numpy_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float: zero-pad, crop at (dy, dx), mirror."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty(images.shape, np.float32)
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, dy:dy + h, dx:dx + w]
        out[i] = crop[:, ::-1] if flip else crop
    return out.transpose(0, 3, 1, 2) / 255.0


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_crops_match_numpy_reference_and_batches_are_channels_last(impl):
    ds = make_shapes("primary", n=50, size=16)
    s = stream(ds, batch_size=16, options=LoaderOptions(kernel_impl=impl, pad=3))
    order = s.batch_indices(0).numpy()
    batches = run_epoch(s)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    for k, (x, y) in enumerate(batches):
        rows = order[k * 16:(k + 1) * 16]
        offsets, flips = s.batch_augmentation(0, k)
        offsets, flips = offsets[: len(rows)].numpy(), flips[: len(rows)].numpy()
        assert offsets.min() >= 0 and offsets.max() <= 6
        expected = numpy_crop_flip(ds.images[rows], offsets, flips, pad=3)
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
        np.testing.assert_array_equal(y.numpy(), ds.labels[rows])
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert 0.0 <= x.min() and x.max() <= 1.0
    all_flips = torch.cat([s.batch_augmentation(0, k)[1] for k in range(len(s))])
    assert 0 < all_flips.float().mean() < 1  # both flipped and unflipped samples occur


def test_eval_batches_are_the_plain_images():
    ds = make_shapes("primary", n=20, size=16)
    (x, y), = run_epoch(stream(ds, batch_size=32, train=False))
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), ds.images / 255.0, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments_say_what_to_change():
    ds = indexed_dataset(10)
    with pytest.raises(ValueError, match="smaller batch size"):
        stream(ds, batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match="rank"):
        stream(ds, rank=2, world_size=2)


def test_paired_stream_cycles_a_smaller_aux_stream_on_its_own_epochs():
    primary = stream(indexed_dataset(64), batch_size=16)  # 4 batches per epoch
    aux = [stream(indexed_dataset(24), batch_size=8, seed=9),  # 3 batches per epoch
           stream(indexed_dataset(10), batch_size=4, seed=10, drop_last=True)]  # 2 per epoch
    paired = PairedStream(primary, aux)
    assert len(paired) == 4
    seen_aux0 = []
    for _ in range(2):  # two primary epochs = 8 steps: aux 0 runs 2 full epochs and 2 batches
        for batch in paired:
            assert batch.x_aux.shape == (12, 3, 16, 16)
            assert torch.equal(batch.aux_source, torch.tensor([0] * 8 + [1] * 4))
            assert torch.equal(batch.aux_source, batch.aux_source.sort().values)
            assert batch.x_aux.is_contiguous(memory_format=torch.channels_last)
            seen_aux0 += sample_ids(batch.x_aux[:8])
    assert sorted(seen_aux0[:24]) == sorted(seen_aux0[24:48]) == list(range(24))
    assert seen_aux0[:24] != seen_aux0[24:48]  # each aux epoch reshuffles
    assert aux[0].state_dict() == {"epoch": 2, "position": 2}


def test_paired_stream_state_round_trip_resumes_identically():
    def build():
        return PairedStream(stream(indexed_dataset(64), batch_size=16),
                            [stream(indexed_dataset(24), batch_size=8, seed=9)])

    whole = build()
    reference = [(sample_ids(b.x_pri), sample_ids(b.x_aux)) for _ in range(2) for b in whole]

    first = build()
    it = iter(first)
    head = [(sample_ids(b.x_pri), sample_ids(b.x_aux)) for _, b in zip(range(3), it)]
    state = first.state_dict()
    resumed = build()
    resumed.load_state_dict(state)
    tail = [(sample_ids(b.x_pri), sample_ids(b.x_aux)) for b in resumed]
    tail += [(sample_ids(b.x_pri), sample_ids(b.x_aux)) for b in resumed]
    assert head + tail == reference


def test_make_stream_builds_resident_from_a_spec_and_rejects_the_rest():
    s = make_stream("shapes:aux?n=40&size=16", backend="resident", batch_size=8, device="cpu",
                    train=False, seed=0, options=LoaderOptions(pad=2))
    assert isinstance(s, ResidentStream) and len(s) == 5 and s.info.num_classes == 20
    assert s.info.meta["split"] == "test" and s.options.pad == 2
    with pytest.raises(ValueError, match=".beton"):
        make_stream(s.dataset, backend="ffcv", batch_size=8, device="cpu", train=True, seed=0)
    with pytest.raises(ValueError, match="resident, ffcv, dali"):
        make_stream(s.dataset, backend="tfdata", batch_size=8, device="cpu", train=True, seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stream_matches_cpu_stream():
    ds = make_shapes("primary", n=100, size=16)
    cpu = run_epoch(stream(ds, options=LoaderOptions(kernel_impl="torch")))
    gpu = run_epoch(stream(ds, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xg.cpu(), xc, atol=1e-6, rtol=0)
        assert torch.equal(yg.cpu(), yc)
