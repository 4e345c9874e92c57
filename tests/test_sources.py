"""Every source against tiny fixtures in its official format: decode, convert, read back byte for byte."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from loaders.beton import read_beton, read_manifest, write_beton
from loaders.sources import SourceError, read_source
from loaders.sources.download import verify_md5, md5_of
from loaders.sources.imagenet_downsampled import split_classes
from tests import fixtures_formats as fx


def roundtrip(tmp_path, fmt, source, split="train", **kw):
    data = read_source(fmt, source, split, **kw)
    out = tmp_path / f"{fmt}-{split}.beton"
    write_beton(out, data, format=fmt, split=split, source=str(source))
    return read_beton(out), read_manifest(out)


def assert_same(ds, images, labels):
    assert ds.images.shape == images.shape
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_archive_and_folder(tmp_path, archive):
    path, expected = fx.write_cifar10(tmp_path, archive=archive)
    for split in ("train", "test"):
        ds, manifest = roundtrip(tmp_path, "cifar10", path, split)
        assert_same(ds, *expected[split])
        assert manifest["class_names"] == [f"class{i}" for i in range(10)]
        assert manifest["count"] == len(expected[split][1])
        assert sum(manifest["class_counts"]) == manifest["count"]
        assert len(manifest["source_sha256"]) == 64


def test_cifar100_fine_and_coarse(tmp_path):
    folder, expected = fx.write_cifar100(tmp_path)
    images, fine, coarse = expected["test"]
    ds, manifest = roundtrip(tmp_path, "cifar100", folder, "test")
    assert_same(ds, images, fine)
    assert manifest["num_classes"] == 100
    ds, manifest = roundtrip(tmp_path, "cifar100", folder, "test", coarse=True)
    assert_same(ds, images, coarse)
    assert manifest["class_names"][:2] == ["c0", "c1"] and manifest["num_classes"] == 20


def test_svhn_label_10_is_digit_0(tmp_path):
    path, (images, digits) = fx.write_svhn(tmp_path, "test")
    ds, manifest = roundtrip(tmp_path, "svhn", tmp_path, "test")
    assert_same(ds, images, digits)
    assert manifest["class_names"] == [str(d) for d in range(10)]


@pytest.mark.parametrize("npz", [False, True])
def test_imagenet_batches_stream(tmp_path, npz):
    root, expected = fx.write_imagenet(tmp_path / "in32", size=32, npz=npz)
    for split in ("train", "test"):
        ds, manifest = roundtrip(tmp_path, "imagenet32", root, split)
        images, labels = expected[split]
        assert_same(ds, images, labels - 1)  # 1-based on disk
        assert manifest["num_classes"] == 1000


def test_imagenet64_and_seeded_imgnet100_split(tmp_path):
    root, expected = fx.write_imagenet(tmp_path / "in64", size=64, batches=1, n=300)
    images, labels = expected["train"]
    ids = split_classes("imgnet100", seed=5)
    assert len(ids) == 100 and len(set(split_classes("imgnet900", 5)) | set(ids)) == 1000
    ds, manifest = roundtrip(tmp_path, "imgnet100", root, "train", size=64, seed=5)
    keep = np.isin(labels, ids)
    assert keep.any()
    assert_same(ds, images[keep], np.searchsorted(ids, labels[keep]))
    assert manifest["meta"]["imagenet_class_ids"] == ids.tolist() and manifest["meta"]["split_seed"] == 5
    ds900, _ = roundtrip(tmp_path, "imgnet900", root, "train", size=64, seed=5)
    assert len(ds) + len(ds900) == len(labels)


def test_imagefolder_and_skip_bad(tmp_path):
    files = fx.write_imagefolder(tmp_path / "tree")
    ds, manifest = roundtrip(tmp_path, "imagefolder", tmp_path / "tree", workers=2)
    expected = [files[p] for p in sorted(files)]
    assert_same(ds, np.stack([e[0] for e in expected]), np.array([e[1] for e in expected]))
    assert manifest["class_names"] == ["class_0", "class_1", "class_2"]

    bad = tmp_path / "tree" / "class_1" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SourceError, match=r"broken\.png: unreadable image"):
        roundtrip(tmp_path, "imagefolder", tmp_path / "tree")
    ds, manifest = roundtrip(tmp_path, "imagefolder", tmp_path / "tree", skip_bad=True)
    assert len(ds) == len(files) and manifest["meta"]["skipped"] == [str(bad)]


def test_imagefolder_resizes_with_centre_crop(tmp_path):
    fx.write_png(tmp_path / "t" / "a" / "wide.png", np.full((40, 80, 3), 200, np.uint8))
    ds, manifest = roundtrip(tmp_path, "imagefolder", tmp_path / "t", size=32)
    assert ds.images.shape == (1, 32, 32, 3) and (ds.images == 200).all()


def test_places365_file_lists(tmp_path):
    root, images, labels = fx.write_places365_lists(tmp_path / "places")
    ds, manifest = roundtrip(tmp_path, "places365", root, "test")
    assert_same(ds, images, labels)
    assert manifest["num_classes"] == 365 and manifest["class_names"][3] == "cls003"


def test_shapes_registry_and_related_flags(tmp_path):
    ds, manifest = roundtrip(tmp_path, "shapes", "aux", "test")
    assert manifest["num_classes"] == len(manifest["related"]) == 20
    assert any(manifest["related"]) and not all(manifest["related"])
    assert ds.meta["related"] == manifest["related"]


# ---- bad inputs: each names the file and what was expected ----

def test_wrong_archive(tmp_path):
    path = fx.tar_bytes({"something/else.txt": b"hello"}, tmp_path / "other.tar.gz")
    with pytest.raises(SourceError, match=r"other\.tar\.gz: wrong archive .*data_batch_1"):
        read_source("cifar10", path)
    not_tar = tmp_path / "junk.tar.gz"
    not_tar.write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match=r"junk\.tar\.gz: not a readable tar archive"):
        read_source("cifar10", not_tar)


def test_truncated_and_unpickleable_batches(tmp_path):
    folder, _ = fx.write_cifar10(tmp_path, archive=False)
    fx.truncated_copy(folder / "data_batch_3", folder / "data_batch_3")
    with pytest.raises(SourceError, match=r"data_batch_3: truncated or not a pickled CIFAR batch"):
        read_source("cifar10", folder)
    root, _ = fx.write_imagenet(tmp_path / "in", size=32, batches=1, n=4)
    (root / "val_data").write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"val_data: truncated or not a downsampled-ImageNet batch"):
        write_beton(tmp_path / "x.beton", read_source("imagenet32", root, "test"))
    assert not (tmp_path / "x.beton").exists()


def test_wrong_shape_dtype_and_labels(tmp_path):
    folder, _ = fx.write_cifar10(tmp_path, archive=False)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    (folder / "test_batch").write_bytes(pickle.dumps({**batch, b"data": batch[b"data"][:, :100]}))
    with pytest.raises(SourceError, match=r"test_batch: expected 'data' of shape \(N, 3072\)"):
        read_source("cifar10", folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({**batch, b"data": batch[b"data"].astype(np.float32)}))
    with pytest.raises(SourceError, match=r"test_batch: expected 'data' of dtype uint8, found float32"):
        read_source("cifar10", folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({**batch, b"labels": [10] * len(batch[b"labels"])}))
    with pytest.raises(SourceError, match=r"test_batch: labels must lie in \[0, 10\), found \[10, 10\]"):
        read_source("cifar10", folder, "test")

    import scipy.io

    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])})
    with pytest.raises(SourceError, match=r"test_32x32\.mat: labels in 'y' must lie in \[1, 10\]"):
        read_source("svhn", tmp_path, "test")
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.array([[1], [2]])})
    with pytest.raises(SourceError, match=r"test_32x32\.mat: expected 'X' of shape \(32, 32, 3, N\)"):
        read_source("svhn", tmp_path, "test")


def test_class_count_mismatch(tmp_path):
    folder, _ = fx.write_cifar10(tmp_path, archive=False)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    with pytest.raises(SourceError, match=r"batches\.meta: expected 10 names under 'label_names', found 2"):
        read_source("cifar10", folder)
    fx.write_imagefolder(tmp_path / "p", classes=3, per_class=1)
    with pytest.raises(SourceError, match=r"expected 365 class folders for Places365, found 3"):
        read_source("places365", tmp_path / "p")


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: empty folder"):
        read_source("imagefolder", tmp_path / "empty")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(SourceError, match=r"cat: empty class folder"):
        read_source("imagefolder", tmp_path / "empty")


def test_download_checksum_verification(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"pretend archive")
    verify_md5(path, md5_of(path))
    with pytest.raises(SourceError, match=r"cifar-10-python\.tar\.gz: MD5 .* does not match the published"):
        verify_md5(path, "c58f30108f718f92721af3b95e74349a")
    # An existing file with the wrong checksum is refused before any network access.
    with pytest.raises(SourceError, match="does not match"):
        read_source("cifar10", tmp_path, download=True)
    with pytest.raises(SourceError, match="--download covers cifar10, cifar100, svhn only"):
        read_source("places365", tmp_path, download=True)


def test_a_places365_list_that_is_not_text_is_named(tmp_path):
    from loaders.sources.base import SourceError

    root, _, _ = fx.write_places365_lists(tmp_path / "places", n=2)
    (root / "places365_val.txt").write_bytes(b"\x80\x81\xff 3\n")
    with pytest.raises(SourceError, match=r"places365_val\.txt: not a text file"):
        read_source("places365", root, split="test")


def test_a_places365_list_entry_that_leaves_the_source_is_refused(tmp_path):
    from loaders.sources.base import SourceError

    root, _, _ = fx.write_places365_lists(tmp_path / "places", n=2)
    fx.write_png(tmp_path / "secret.png", np.zeros((32, 32, 3), np.uint8))  # outside the source folder
    lines = (root / "places365_val.txt").read_text().splitlines()
    (root / "places365_val.txt").write_text("\n".join([lines[0], "../../secret.png 3"]) + "\n")
    with pytest.raises(SourceError, match=r"places365_val\.txt:2: '\.\./\.\./secret\.png' leaves the source folder"):
        read_source("places365", root, split="test")
