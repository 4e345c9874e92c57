"""The DALI loader backend against a numpy reference, on CPU-only pipelines (device_id=None).

Every test dataset labels sample i with class i, so a batch's labels say exactly which samples
it holds; that is how coverage, sharding and the reference comparison identify them.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from loaders.backends.dali_plan import draw_crop_flip
from loaders.backends.dali_source import StreamedDataset
from loaders.options import LoaderOptions
from loaders.stream import PairedStream
from loaders.types import ArrayDataset


def _dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return False


needs_dali = pytest.mark.skipif(
    not _dali_installed(), reason="NVIDIA DALI not installed: pip install 'biamat-engine[dali]'"
)


def identity_dataset(n: int, size: int = 8, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n), [f"c{i}" for i in range(n)], name=f"ident{n}")


def make_stream(dataset, **options):
    from loaders.backends.dali_backend import DaliStream

    defaults = dict(batch_size=8, device="cpu", train=True, seed=3)
    return DaliStream(dataset, **{**defaults, **options})


def reference_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray,
                        pad: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> float32 [0, 1]: zero-pad, crop at offsets, mirror where flipped."""
    _, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty(images.shape, dtype=np.float32)
    for i, ((row, col), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, row:row + height, col:col + width]
        out[i] = (crop[:, ::-1] if flip else crop) / np.float32(255)
    return out


def collect(stream) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in stream.epoch()]


def labels_of(batches) -> np.ndarray:
    return np.concatenate([y.numpy() for _, y in batches]) if batches else np.empty(0, np.int64)


@needs_dali
def test_batches_match_numpy_reference_of_the_drawn_crops_and_flips():
    data = identity_dataset(21)
    stream = make_stream(data, options=LoaderOptions(pad=4), seed=11)
    batches = collect(stream)
    flips_seen, shifts_seen = 0, 0
    for index, (x, y) in enumerate(batches):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 3, 8, 8)
        assert x.is_contiguous(memory_format=torch.channels_last)
        draws = draw_crop_flip(len(y), batch_size=8, pad=4, seed=11, epoch=0, rank=0,
                               batch_index=index)
        expected = reference_crop_flip(data.images[y.numpy()], draws.offsets, draws.flips, pad=4)
        np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=0, atol=1e-6)
        flips_seen += int(draws.flips.sum())
        shifts_seen += int((draws.offsets != 4).any(axis=1).sum())
    # The comparison only means something if the augmentation actually moved pixels.
    assert flips_seen > 0 and shifts_seen > 0


@needs_dali
def test_eval_stream_keeps_dataset_order_without_augmentation():
    data = identity_dataset(13)
    batches = collect(make_stream(data, train=False, batch_size=5))
    assert [len(y) for _, y in batches] == [5, 5, 3]
    np.testing.assert_array_equal(labels_of(batches), np.arange(13))
    x = torch.cat([x for x, _ in batches]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(x, data.images / np.float32(255), rtol=0, atol=1e-6)


@needs_dali
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_at_most_once_per_epoch_and_all_of_them_without_drop_last(drop_last):
    data = identity_dataset(21)
    stream = make_stream(data, batch_size=8, drop_last=drop_last)
    first, second = collect(stream), collect(stream)
    for batches in (first, second):
        assert len(batches) == len(stream) == (2 if drop_last else 3)
        seen = labels_of(batches)
        assert len(np.unique(seen)) == len(seen)
        if drop_last:
            assert [len(y) for _, y in batches] == [8, 8]
        else:
            np.testing.assert_array_equal(np.sort(seen), np.arange(21))
    assert not np.array_equal(labels_of(first), labels_of(second)), "epochs must reshuffle"
    assert stream.state_dict() == {"epoch": 2, "position": 0}


@needs_dali
def test_two_shards_are_disjoint_and_cover_the_epoch():
    data = identity_dataset(20)
    shards = [labels_of(collect(make_stream(data, batch_size=4, rank=r, world_size=2)))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 10
    assert not set(shards[0]) & set(shards[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(20))


@needs_dali
def test_uneven_shards_agree_on_the_batch_count_and_wrap_or_drop():
    data = identity_dataset(21)
    wrapped = [make_stream(data, batch_size=4, rank=r, world_size=2) for r in range(2)]
    shards = [labels_of(collect(s)) for s in wrapped]
    assert len(wrapped[0]) == len(wrapped[1]) == 3
    assert len(shards[0]) == len(shards[1]) == 11
    np.testing.assert_array_equal(np.unique(np.concatenate(shards)), np.arange(21))

    dropped = [make_stream(data, batch_size=4, rank=r, world_size=2, drop_last=True)
               for r in range(2)]
    shards = [labels_of(collect(s)) for s in dropped]
    assert len(dropped[0]) == len(dropped[1]) == 2
    assert len(shards[0]) == len(shards[1]) == 8
    assert not set(shards[0]) & set(shards[1])


@needs_dali
@pytest.mark.parametrize("train", [True, False])
def test_dali_and_resident_streams_yield_the_same_batches(train):
    from loaders.backends.resident import ResidentStream

    data = identity_dataset(21)
    options = dict(batch_size=8, device="cpu", train=train, seed=4, rank=1, world_size=2)
    dali_stream = make_stream(data, **options)
    resident_stream = ResidentStream(data, **options, options=LoaderOptions(kernel_impl="torch"))
    dali = collect(dali_stream) + collect(dali_stream)  # two epochs each
    resident = collect(resident_stream) + collect(resident_stream)
    assert len(dali) == 4
    for (x, y), (xr, yr) in zip(dali, resident, strict=True):
        assert torch.equal(y, yr)
        torch.testing.assert_close(x, xr, rtol=0, atol=1e-6)


@needs_dali
def test_same_seed_gives_identical_batches_and_another_seed_does_not():
    data = identity_dataset(19)
    a, b = collect(make_stream(data, seed=5)), collect(make_stream(data, seed=5))
    c = collect(make_stream(data, seed=6))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in c]))


@needs_dali
def test_resume_mid_epoch_reproduces_the_uninterrupted_run():
    data = identity_dataset(29)
    full = make_stream(data, batch_size=4, seed=2)
    uninterrupted = collect(full) + collect(full)  # epochs 0 and 1, 8 batches each

    first = make_stream(data, batch_size=4, seed=2)
    collect(first)
    it = first.epoch()
    head = [next(it) for _ in range(3)]  # three batches into epoch 1
    state = first.state_dict()
    assert state == {"epoch": 1, "position": 3}
    del it

    resumed = make_stream(data, batch_size=4, seed=2)
    resumed.load_state_dict(state)
    tail = collect(resumed)
    assert len(head) + len(tail) == 8
    for (x, y), (xu, yu) in zip(head + tail, uninterrupted[8:], strict=True):
        assert torch.equal(x, xu) and torch.equal(y, yu)
    assert resumed.state_dict() == {"epoch": 2, "position": 0}


@needs_dali
def test_paired_stream_cycles_a_dali_aux_stream_through_its_own_epochs():
    primary = make_stream(identity_dataset(12), batch_size=4, seed=1)
    aux_data = identity_dataset(10, seed=9)
    paired = PairedStream(primary, [make_stream(aux_data, batch_size=4, seed=7, drop_last=True)])
    steps = [batch for _ in range(2) for batch in paired]  # two primary epochs, 6 steps

    # The aux stream alone, for three of its own epochs (2 full batches each).
    alone = make_stream(aux_data, batch_size=4, seed=7, drop_last=True)
    expected = [b for _ in range(3) for b in collect(alone)]
    assert len(steps) == 6 == len(expected)
    for batch, (x_aux, y_aux) in zip(steps, expected, strict=True):
        assert batch.x_pri.shape == (4, 3, 8, 8)
        assert torch.equal(batch.x_aux, x_aux) and torch.equal(batch.y_aux, y_aux)
        assert torch.equal(batch.aux_source, torch.zeros(4, dtype=torch.int64))
    # Two batches of its third epoch are out; the epoch ends only when asked for one more.
    assert paired.state_dict()["aux"][0] == {"epoch": 2, "position": 2}


@needs_dali
def test_paired_stream_of_dali_streams_resumes_mid_epoch():
    def paired():
        return PairedStream(make_stream(identity_dataset(12), batch_size=4, seed=1),
                            [make_stream(identity_dataset(10, seed=9), batch_size=4, seed=7)])

    whole = paired()
    uninterrupted = [b for _ in range(2) for b in whole]  # 6 steps over 2 primary epochs
    first = paired()
    steps = iter(first)
    head = [next(steps) for _ in range(2)]
    state = first.state_dict()
    del steps
    resumed = paired()
    resumed.load_state_dict(state)
    tail = list(resumed) + list(resumed)
    for got, want in zip(head + tail, uninterrupted, strict=True):
        for field in ("x_pri", "y_pri", "x_aux", "y_aux", "aux_source"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field


@needs_dali
def test_streamed_dataset_reads_only_batches_and_matches_the_in_memory_stream(tmp_path):
    data = identity_dataset(17)
    np.save(tmp_path / "images.npy", data.images)
    streamed = StreamedDataset.from_npy(tmp_path / "images.npy", data.labels, data.class_names)
    requested: list[int] = []
    memmap_read = streamed.read

    def counting_read(index):
        requested.append(len(index))
        return memmap_read(index)

    streamed.read = counting_read
    from_disk = collect(make_stream(streamed, batch_size=4, prefetch_queue_depth=1))
    in_memory = collect(make_stream(data, batch_size=4))
    for (x, y), (xm, ym) in zip(from_disk, in_memory, strict=True):
        assert torch.equal(x, xm) and torch.equal(y, ym)
    assert max(requested) <= 4 and sum(requested) == 17


@needs_dali
def test_a_reader_returning_the_wrong_shape_is_named_in_the_error():
    data = identity_dataset(6)
    broken = StreamedDataset(lambda index: data.images[index, :4], data.labels,
                             data.class_names, image_size=8, name="broken")
    with pytest.raises(Exception, match="broken: the reader returned"):
        collect(make_stream(broken, batch_size=3))


@needs_dali
def test_invalid_shard_and_resume_positions_are_rejected():
    data = identity_dataset(8)
    with pytest.raises(ValueError, match="rank must lie in"):
        make_stream(data, rank=2, world_size=2)
    stream = make_stream(data, batch_size=4)
    with pytest.raises(ValueError, match="saved position 5"):
        stream.load_state_dict({"epoch": 0, "position": 5})
    with pytest.raises(ValueError, match="make no batch of 16"):
        make_stream(data, batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match="workers"):
        make_stream(data, options=LoaderOptions(workers=0))


@needs_dali
def test_the_backend_factory_builds_a_dali_stream_from_a_dataset_spec():
    from loaders.backends.dali_backend import DaliStream
    from loaders.datasets import make_stream as make_named_stream

    stream = make_named_stream("shapes:primary?n=40&size=16", backend="dali", batch_size=16,
                               device="cpu", train=True, seed=0, options=LoaderOptions(workers=1))
    assert isinstance(stream, DaliStream) and len(stream) == 3
    batches = collect(stream)
    assert [tuple(x.shape) for x, _ in batches] == [(16, 3, 16, 16)] * 2 + [(8, 3, 16, 16)]
    assert all(0 <= int(y.min()) and int(y.max()) < stream.info.num_classes for _, y in batches)


def _train_one_epoch(loader: str, out_dir) -> dict:
    """`biamat-engine train --loader LOADER` for one tiny epoch on shapes; its metrics record."""
    import json

    from typer.testing import CliRunner

    from cli.app import app

    settings = ["data.batch_size=16", "data.aux_batch_size=8", "data.num_workers=1",
                "attack.steps=1", "method.warmup_epochs=0", "runtime.compile=off", "eval.n=8",
                "eval.steps=1"]
    result = CliRunner().invoke(app, [
        "train", "--primary", "shapes:primary?n=32&size=16", "--aux", "shapes:aux?n=24&size=16",
        "--test", "shapes:primary?n=16&size=16", "--model", "wrn-10-1", "--epochs", "1",
        "--loader", loader, "--device", "cpu", "--out", str(out_dir),
        *[arg for item in settings for arg in ("--set", item)],
    ])
    assert result.exit_code == 0, result.output
    assert f'loader = "{loader}"' in (out_dir / "config.toml").read_text()
    (line,) = (out_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(line)


@needs_dali
def test_a_training_epoch_on_shapes_with_loader_dali_matches_the_resident_loader(tmp_path):
    dali = _train_one_epoch("dali", tmp_path / "dali")
    assert (tmp_path / "dali" / "model.safetensors").is_file()
    assert dali["epoch"] == 1 and dali["step"] == 2
    # Both loaders draw the same order and augmentation from the seed, so the two runs see the
    # same pixels (up to float rounding of the /255) and end with the same losses.
    resident = _train_one_epoch("resident", tmp_path / "resident")
    for key in ("loss", "loss_pri", "loss_high"):
        assert dali[key] == pytest.approx(resident[key], rel=1e-4), key


def test_missing_dali_says_how_to_install_it(monkeypatch):
    from loaders.backends.dali_backend import DaliStream

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    with pytest.raises(ImportError, match=r"pip install 'biamat-engine\[dali\]'"):
        DaliStream(identity_dataset(4), batch_size=2, device="cpu", train=True, seed=0)


@needs_dali
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_matches_the_cpu_pipeline():
    data = identity_dataset(19, size=32)
    on_gpu = collect(make_stream(data, device="cuda", batch_size=8))
    on_cpu = collect(make_stream(data, device="cpu", batch_size=8))
    for (x, y), (xc, yc) in zip(on_gpu, on_cpu, strict=True):
        assert x.is_cuda and y.is_cuda
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y.cpu(), yc)
        torch.testing.assert_close(x.cpu(), xc, rtol=0, atol=1e-6)  # GPU float rounding may differ
