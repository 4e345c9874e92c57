"""The .beton writer/reader: round trips, FFCV's own reader and writer agree, failures leave nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from loaders.beton import SAMPLE_META, read_beton, read_manifest, write_beton
from loaders.sources.base import ChunkedSource, SourceError
from loaders.types import ArrayDataset


def random_dataset(n=300, size=32, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, classes, n),
                        [f"k{i}" for i in range(classes)], "rand", {"related": [True] * classes})


def chunked(ds, rows, count, fail_after=None):
    def chunks():
        for i, start in enumerate(range(0, len(ds), rows)):
            if fail_after is not None and i == fail_after:
                raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a write
            yield ds.subset(np.arange(start, min(start + rows, len(ds))))
    return ChunkedSource(chunks, ds.class_names, ds.image_size, ds.name, count, dict(ds.meta))


def test_the_manifest_records_the_exact_per_channel_statistics_of_the_pixels(tmp_path):
    # What the model normalises with: mean and population std of every pixel in [0, 1] units,
    # the same however the writer's chunks fall, and what every reader of the file reports.
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (130, 8, 8, 3), dtype=np.uint8)
    images[..., 2] //= 3  # channels that differ, so a channel mix-up shows
    ds = ArrayDataset(images, rng.integers(0, 4, 130), [f"k{i}" for i in range(4)], "rand")
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    manifest = write_beton(tmp_path / "d.beton", chunked(ds, 47, None))
    np.testing.assert_allclose(manifest["channel_mean"], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(manifest["channel_std"], pixels.std(0), rtol=1e-12)
    assert read_beton(tmp_path / "d.beton").info.channel_stats == (manifest["channel_mean"], manifest["channel_std"])
    # An in-memory set computes the same numbers; a subset does not inherit the whole set's.
    assert ds.with_channel_stats().info.channel_stats == (manifest["channel_mean"], manifest["channel_std"])
    assert ds.subset(np.arange(10)).info.channel_stats is None


@pytest.mark.parametrize("count_known", [True, False])
def test_roundtrip_across_pages(tmp_path, count_known):
    ds = random_dataset(n=1500, size=64)  # 12 KiB images over several 2 MiB pages
    out = tmp_path / "d.beton"
    seen = []
    manifest = write_beton(out, chunked(ds, 256, len(ds) if count_known else None), page_size=1 << 21,
                           progress=seen.append)
    back = read_beton(out)
    np.testing.assert_array_equal(back.images, ds.images)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert back.class_names == ds.class_names and sum(seen) == len(ds)
    assert manifest == read_manifest(out) and manifest["related"] == [True] * 7
    assert manifest["class_counts"] == np.bincount(ds.labels, minlength=7).tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.beton", "d.beton.json"]


def test_ffcv_reader_agrees():
    pytest.importorskip("ffcv")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, get_metadata_type

    from loaders.beton import ALLOC_ENTRY, FIELD_DESC, HEADER

    theirs = get_metadata_type([RGBImageField(), IntField()])
    assert theirs.itemsize == SAMPLE_META.itemsize
    assert [theirs.fields[n][1] for n in theirs.names] == [SAMPLE_META.fields[n][1] for n in SAMPLE_META.names]
    assert theirs[0] == SAMPLE_META["image"]
    for ours, ffcv_dtype in ((HEADER, HeaderType), (FIELD_DESC, FieldDescType), (ALLOC_ENTRY, ALLOC_TABLE_TYPE)):
        assert ours == ffcv_dtype


def test_ffcv_reader_reads_our_file(tmp_path):
    pytest.importorskip("ffcv")
    from ffcv.reader import Reader

    ds = random_dataset(n=50)
    write_beton(tmp_path / "d.beton", ds)
    reader = Reader(str(tmp_path / "d.beton"))
    assert reader.num_samples == 50 and list(reader.handlers) == ["image", "label"]
    np.testing.assert_array_equal(reader.metadata["f1"], ds.labels)
    assert len(reader.alloc_table) == 50


class _Indexed:
    """A dataset as FFCV's writer takes it: index -> (H x W x 3 uint8 image, int label)."""

    def __init__(self, ds: ArrayDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds.images[i], int(self.ds.labels[i])


@pytest.mark.parametrize("count_known", [True, False])
def test_ffcv_dataset_writer_writes_the_same_file(tmp_path, count_known):
    writer_module = pytest.importorskip("ffcv.writer", reason="ffcv is not installed: pip install -e '.[ffcv]'")
    from ffcv.fields import IntField, RGBImageField

    from loaders.beton import ALLOC_ENTRY, FIELD_DESC, HEADER

    # 64x64 images: 170 fit a 2 MiB page with 8 KiB to spare, so 400 samples fill two pages with
    # padding at their ends and part of a third, which is zero-filled to the page's end.
    ds = random_dataset(n=400, size=64)
    ours, theirs = tmp_path / "ours.beton", tmp_path / "theirs.beton"
    write_beton(ours, chunked(ds, 128, len(ds) if count_known else None), page_size=1 << 21)
    # One worker: FFCV's workers claim pages first come first served, so with several the data
    # pointers and the allocation table's order would follow the scheduler. One worker packs the
    # samples in order, page after page, which is the layout our writer promises.
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
    writer_module.DatasetWriter(str(theirs), fields, page_size=1 << 21, num_workers=1).from_indexed_dataset(_Indexed(ds))
    a, b = ours.read_bytes(), theirs.read_bytes()

    # Region by region first, so that a difference names what differs.
    header_a, header_b = np.frombuffer(a, HEADER, 1)[0], np.frombuffer(b, HEADER, 1)[0]
    assert header_a.tolist() == header_b.tolist()  # version, fields, page size, samples, alloc table pointer
    n, alloc_ptr = int(header_a["num_samples"]), int(header_a["alloc_table_ptr"])
    assert n == len(ds)
    desc_a = np.frombuffer(a, FIELD_DESC, 2, offset=HEADER.itemsize)
    desc_b = np.frombuffer(b, FIELD_DESC, 2, offset=HEADER.itemsize)
    assert desc_a.tobytes() == desc_b.tobytes()  # type ids, names, (zero) arguments
    meta_at = HEADER.itemsize + 2 * FIELD_DESC.itemsize
    meta_a = np.frombuffer(a, SAMPLE_META, n, offset=meta_at)
    meta_b = np.frombuffer(b, SAMPLE_META, n, offset=meta_at)
    for name in ("mode", "width", "height", "data_ptr"):
        np.testing.assert_array_equal(meta_a["image"][name], meta_b["image"][name], err_msg=name)
    np.testing.assert_array_equal(meta_a["label"], meta_b["label"])
    assert meta_a.tobytes() == meta_b.tobytes()  # the alignment padding inside each record too
    alloc_a = np.frombuffer(a, ALLOC_ENTRY, n, offset=alloc_ptr)
    alloc_b = np.frombuffer(b, ALLOC_ENTRY, n, offset=alloc_ptr)
    assert alloc_a.tobytes() == alloc_b.tobytes() and len(a) == alloc_ptr + n * ALLOC_ENTRY.itemsize

    # FFCV's file decodes to the source samples (through our reader: the manifest is ours).
    (tmp_path / "theirs.beton.json").write_bytes((tmp_path / "ours.beton.json").read_bytes())
    decoded = read_beton(theirs)
    np.testing.assert_array_equal(decoded.images, ds.images)
    np.testing.assert_array_equal(decoded.labels, ds.labels)

    # And nothing else differs: the zero pad before the first page, page tails, the last page.
    assert len(a) == len(b) and a == b


@pytest.mark.parametrize("error", ["interrupt", "bad-chunk"])
def test_failed_write_leaves_nothing(tmp_path, error):
    ds = random_dataset()
    out = tmp_path / "d.beton"
    if error == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            write_beton(out, chunked(ds, 64, len(ds), fail_after=2))
    else:
        bad = ArrayDataset(ds.images[:, :16, :16], ds.labels, ds.class_names, "bad")
        src = ChunkedSource(lambda: iter([ds.subset(np.arange(64)), bad]), ds.class_names, 32, "mixed")
        with pytest.raises(SourceError, match=r"bad: every image must be 32x32x3"):
            write_beton(out, src)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_file(tmp_path):
    out = tmp_path / "d.beton"
    old = write_beton(out, random_dataset(seed=1))
    with pytest.raises(KeyboardInterrupt):
        write_beton(out, chunked(random_dataset(seed=2), 64, None, fail_after=1))
    assert read_manifest(out) == old
    np.testing.assert_array_equal(read_beton(out).images, random_dataset(seed=1).images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.beton", "d.beton.json"]


def test_count_mismatch_and_empty_source(tmp_path):
    ds = random_dataset()
    with pytest.raises(SourceError, match="announced 301 samples but yielded 300"):
        write_beton(tmp_path / "d.beton", chunked(ds, 100, 301))
    with pytest.raises(SourceError, match="holds no images"):
        write_beton(tmp_path / "d.beton", ChunkedSource(lambda: iter([]), ["a"], 32, "none"))
    assert list(tmp_path.iterdir()) == []


def test_reader_errors_name_the_file(tmp_path):
    write_beton(tmp_path / "d.beton", random_dataset())
    (tmp_path / "d.beton.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"d\.beton\.json: manifest not found"):
        read_manifest(tmp_path / "d.beton")
    # The file itself still reads, its classes numbered (tests/test_beton_without_manifest.py).
    assert read_beton(tmp_path / "d.beton").class_names == [str(c) for c in range(7)]
    (tmp_path / "t.beton").write_bytes(b"\x02\x00" * 10)
    with pytest.raises(ValueError, match=r"t\.beton: 20 bytes is too short"):
        read_beton(tmp_path / "t.beton")


def test_prepare_cli_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    runner = CliRunner()
    out = tmp_path / "s.beton"
    result = runner.invoke(app, ["prepare", "shapes", "primary", str(out), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["split"] == "test" and len(read_beton(out)) == read_manifest(out)["count"]
    (tmp_path / "junk.tar.gz").write_bytes(b"nope")
    result = runner.invoke(app, ["prepare", "cifar10", str(tmp_path / "junk.tar.gz"), str(tmp_path / "c.beton")])
    message = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1 and "junk.tar.gz: not a readable tar archive" in message
    assert not (tmp_path / "c.beton").exists() and not (tmp_path / "c.beton.json").exists()


def test_temporaries_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    """SIGKILL leaves hidden temporaries (up to a whole .beton each); the next write of the same
    target removes those whose writer is gone, and keeps a live writer's and other targets'."""
    import os
    import subprocess

    from loaders.beton import write_beton
    from loaders.sources.shapes import make_shapes

    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    orphans = [tmp_path / f".data.beton.{dead.pid}-abc123.tmp", tmp_path / f".data.beton.{dead.pid}-abc123.json.tmp",
               tmp_path / ".data.beton.old_naming.tmp"]
    live = tmp_path / f".data.beton.{os.getpid()}-xyz.tmp"
    other = tmp_path / f".other.beton.{dead.pid}-abc.tmp"
    for f in (*orphans, live, other):
        f.write_bytes(b"x" * 10)
    write_beton(tmp_path / "data.beton", make_shapes("primary", "train", n=8, size=8), format="shapes")
    assert not any(f.exists() for f in orphans)
    assert live.exists() and other.exists()
