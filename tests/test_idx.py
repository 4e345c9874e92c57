"""IDX sources (`prepare idx`, `prepare fashion-mnist`) and the class/image subset options:
round trips of crafted IDX pairs, raw and gzipped; one clear error and no output for each
kind of bad file; relabelling, n per class, seeded draws, complements; the real Fashion-MNIST
of Debian's package where it is installed."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from loaders.beton import read_beton, read_manifest, write_beton
from loaders.sources import SourceError, read_source
from loaders.sources.derive import select_classes
from loaders.sources.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_FILES
from tests import fixtures_formats as fx


def invoke(*args):
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(app, ["prepare", *map(str, args)])


def flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.stack([grey] * 3, axis=-1)


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_pair_round_trips_as_grey_replicated_to_rgb(tmp_path, gz):
    images_path, labels_path, images, labels = fx.write_idx(tmp_path, gz=gz)
    data = read_source("idx", (images_path, labels_path))
    out = tmp_path / "mnist.beton"
    write_beton(out, data, format="idx", source=f"{images_path},{labels_path}")
    back, manifest = read_beton(out), read_manifest(out)
    np.testing.assert_array_equal(back.images, as_rgb(images))
    np.testing.assert_array_equal(back.labels, labels)
    assert manifest["class_names"] == [str(c) for c in range(10)] and manifest["image_size"] == 28
    assert manifest["meta"]["channels_source"] == 1 and "replicated" in manifest["meta"]["colour_mode"]
    # The three channels are one: their statistics agree.
    assert len(set(manifest["channel_mean"])) == 1
    assert len(manifest["source_sha256"]) == 64


def test_prepare_fashion_mnist_from_a_folder_names_its_classes(tmp_path):
    fx.write_idx(tmp_path / "fm", "train", n=20, gz=True)
    _, _, images, labels = fx.write_idx(tmp_path / "fm", "t10k", n=12, gz=False)
    out = tmp_path / "fm-test.beton"
    result = invoke("fashion-mnist", tmp_path / "fm", out, "--split", "test")
    assert result.exit_code == 0, result.output
    back, manifest = read_beton(out), read_manifest(out)
    np.testing.assert_array_equal(back.images, as_rgb(images))
    np.testing.assert_array_equal(back.labels, labels)
    assert manifest["class_names"] == FASHION_MNIST_CLASSES and manifest["class_names"][0] == "T-shirt/top"
    assert manifest["name"] == "fashion-mnist" and manifest["split"] == "test"


def test_prepare_idx_takes_the_two_files_and_counts_paths(tmp_path):
    images_path, labels_path, images, labels = fx.write_idx(tmp_path, gz=True)
    out = tmp_path / "m.beton"
    result = invoke("idx", images_path, labels_path, out)
    assert result.exit_code == 0, result.output
    assert "30 images 28x28, 10 classes" in flat(result.output)
    np.testing.assert_array_equal(read_beton(out).labels, labels)
    assert read_manifest(out)["source"] == f"{images_path},{labels_path}"
    missing = invoke("idx", images_path, tmp_path / "other.beton")  # the labels file left out
    assert missing.exit_code == 2 and "idx takes SOURCE SOURCE OUT.beton" in flat(missing.output)
    assert not (tmp_path / "other.beton").exists()


def _corrupt(path, blob: bytes) -> None:
    path.write_bytes(blob)


@pytest.mark.parametrize("damage,message", [
    ("float images", "magic number 0x00000d03, expected 0x00000803 for IDX images"),
    ("labels as images", "1 dimensions, expected 3 for IDX images"),
    ("count mismatch", "30 images but"),
    ("truncated pixels", "truncated: "),
    ("truncated header", "truncated: 9 bytes end inside the 16-byte IDX header"),
    ("trailing bytes", "trailing bytes"),
    ("truncated gzip", "truncated or corrupt gzip file"),
    ("non-square", "images of 28x14; expected square images"),
])
def test_a_bad_idx_file_exits_1_naming_it_and_writes_nothing(tmp_path, damage, message):
    images_path, labels_path, images, labels = fx.write_idx(tmp_path)
    blob = images_path.read_bytes()
    target = images_path
    if damage == "float images":
        _corrupt(images_path, blob[:2] + b"\x0d" + blob[3:])
    elif damage == "labels as images":
        _corrupt(images_path, labels_path.read_bytes())
    elif damage == "count mismatch":
        _corrupt(labels_path, fx.idx_bytes(labels[:29]))
        target = images_path  # the message names both, the images file first
    elif damage == "truncated pixels":
        fx.truncated_copy(images_path, images_path, keep=0.7)
    elif damage == "truncated header":
        _corrupt(images_path, blob[:9])
    elif damage == "trailing bytes":
        _corrupt(images_path, blob + b"\0")
    elif damage == "truncated gzip":
        gz = images_path.with_name(images_path.name + ".gz")
        gz.write_bytes(gzip.compress(blob)[:-100])
        target = images_path = gz
    elif damage == "non-square":
        _corrupt(images_path, fx.idx_bytes(images[:, :, :14]))
    out = tmp_path / "bad.beton"
    result = invoke("idx", images_path, labels_path, out)
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert text.startswith("error:") and str(target) in text and message in text, text
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "bad.beton.json").exists()


def test_a_refused_prepare_leaves_an_existing_output_byte_identical(tmp_path):
    images_path, labels_path, _, labels = fx.write_idx(tmp_path)
    out = tmp_path / "kept.beton"
    assert invoke("idx", images_path, labels_path, out).exit_code == 0
    before = {p: p.read_bytes() for p in (out, tmp_path / "kept.beton.json")}
    labels_path.write_bytes(fx.idx_bytes(labels[:5]))
    result = invoke("idx", images_path, labels_path, out, "--overwrite")  # allowed, but the input is bad
    assert result.exit_code == 1 and "30 images but" in flat(result.output)
    assert {p: p.read_bytes() for p in before} == before


def test_fashion_mnist_says_which_file_is_missing(tmp_path):
    fx.write_idx(tmp_path, "train", n=10)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    result = invoke("fashion-mnist", tmp_path, tmp_path / "f.beton")
    assert result.exit_code == 1
    assert "neither train-labels-idx1-ubyte nor train-labels-idx1-ubyte.gz is there" in flat(result.output)
    with pytest.raises(SourceError, match="split must be one of"):
        read_source("fashion-mnist", tmp_path, "extra")


def test_labels_beyond_fashion_mnist_classes_are_refused(tmp_path):
    _, labels_path, _, labels = fx.write_idx(tmp_path, "train", n=12, classes=11)
    with pytest.raises(SourceError, match=r"train-labels-idx1-ubyte: labels must lie in \[0, 10\), found \[0, 10\]"):
        read_source("fashion-mnist", tmp_path)


# ---- subsets: --classes, --n-per-class, --seed ----

def _grey(n: int = 40, classes: int = 4):
    from loaders.types import ArrayDataset

    # Pixel 0 holds the sample's index, so a subset's images say where they came from.
    images = np.zeros((n, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return ArrayDataset(images, np.arange(n) % classes, [f"c{i}" for i in range(classes)], "toy")


def test_classes_are_relabelled_in_the_order_given_and_keep_their_source_ids_and_names():
    data = _grey()
    sub = select_classes(data, [3, 1], None, seed=0)
    origin = sub.images[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(origin, np.flatnonzero(np.isin(data.labels, [3, 1])))  # source order kept
    np.testing.assert_array_equal(sub.labels, np.where(data.labels[origin] == 3, 0, 1))
    assert sub.class_names == ["c3", "c1"]
    assert sub.meta["subset"]["classes"] == [3, 1] and sub.meta["subset"]["source_class_names"] == ["c0", "c1", "c2", "c3"]


def test_n_per_class_draws_exactly_n_of_each_reproducibly_from_the_seed():
    data = _grey(n=80)
    a, again, other = (select_classes(data, None, 5, seed=s) for s in (1, 1, 2))
    assert np.bincount(a.labels).tolist() == [5, 5, 5, 5] and a.class_names == data.class_names
    np.testing.assert_array_equal(a.images, again.images)
    assert not np.array_equal(a.images, other.images)
    assert a.meta["subset"]["index"] == sorted(a.images[:, 0, 0, 0].astype(int).tolist())
    with pytest.raises(SourceError, match=r"--n-per-class 21: class 0 \(c0\) of toy holds 20 images"):
        select_classes(data, None, 21, seed=0)


def test_a_subset_and_its_complement_partition_the_set(tmp_path):
    images_path, labels_path, images, labels = fx.write_idx(tmp_path / "src", n=40)
    outs = {}
    for name, classes in (("pri", "0,2,4"), ("aux", "1,3,5,6,7,8,9")):
        outs[name] = tmp_path / f"{name}.beton"
        result = invoke("idx", images_path, labels_path, outs[name], "--classes", classes)
        assert result.exit_code == 0, result.output
    pri, aux = read_beton(outs["pri"]), read_beton(outs["aux"])
    assert len(pri) + len(aux) == len(images)
    assert set(pri.labels.tolist()) == {0, 1, 2} and set(aux.labels.tolist()) == set(range(7))
    assert pri.class_names == ["0", "2", "4"] and aux.class_names == ["1", "3", "5", "6", "7", "8", "9"]
    # The original label of every image, from the manifest's class ids, is the source's.
    for beton, data in ((outs["pri"], pri), (outs["aux"], aux)):
        ids = np.array(read_manifest(beton)["meta"]["subset"]["classes"])
        picked = np.isin(labels, ids)
        np.testing.assert_array_equal(data.images[..., 0], images[picked])
        np.testing.assert_array_equal(ids[data.labels], labels[picked])


@pytest.mark.parametrize("args,message", [
    (["--classes", "0,10"], "--classes 0,10: train-images-idx3-ubyte has classes 0..9"),
    (["--classes", "1,1"], "expected distinct class ids"),
    (["--classes", "a"], "expected distinct class ids"),
    (["--n-per-class", "4"], "--n-per-class 4: class 0 (0) of"),
])
def test_a_bad_subset_exits_1_and_writes_nothing(tmp_path, args, message):
    images_path, labels_path, _, _ = fx.write_idx(tmp_path, n=30)
    out = tmp_path / "s.beton"
    result = invoke("idx", images_path, labels_path, out, *args)
    assert result.exit_code == 1, result.output
    assert message in flat(result.output)
    assert not out.exists()


def test_shapes_still_reads_a_single_number_as_its_class_count(tmp_path):
    out = tmp_path / "s.beton"
    result = invoke("shapes", "primary", out, "--size", "8", "--n", "24", "--classes", "3")
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["num_classes"] == 3 and "subset" not in read_manifest(out)["meta"]
    result = invoke("shapes", "primary", out.with_name("t.beton"), "--size", "8", "--n", "24", "--classes", "0,2")
    assert result.exit_code == 0, result.output
    assert read_manifest(out.with_name("t.beton"))["meta"]["subset"]["classes"] == [0, 2]


# ---- the real files, where Debian's dataset-fashion-mnist is installed ----

def _read_idx_directly(path, header: int) -> np.ndarray:
    with gzip.open(path) as fp:
        return np.frombuffer(fp.read(), np.uint8, offset=header)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"{FASHION_MNIST_DIR} missing: `apt-get install dataset-fashion-mnist` installs it")
def test_real_fashion_mnist_test_split_20_per_class_matches_a_direct_read(tmp_path):
    out = tmp_path / "fm.beton"
    result = invoke("fashion-mnist", out, "--split", "test", "--n-per-class", "20", "--seed", "3")
    assert result.exit_code == 0, result.output
    back, manifest = read_beton(out), read_manifest(out)
    images_name, labels_name = FASHION_MNIST_FILES["test"]
    images = _read_idx_directly(FASHION_MNIST_DIR / f"{images_name}.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx_directly(FASHION_MNIST_DIR / f"{labels_name}.gz", 8)
    assert len(images) == len(labels) == 10000
    index = np.array(manifest["meta"]["subset"]["index"])
    assert len(back) == 200 and np.bincount(back.labels).tolist() == [20] * 10
    np.testing.assert_array_equal(back.images, as_rgb(images[index]))
    np.testing.assert_array_equal(back.labels, labels[index])
    assert manifest["class_names"] == FASHION_MNIST_CLASSES and manifest["source"] == str(FASHION_MNIST_DIR)
    assert json.loads(out.with_name("fm.beton.json").read_text())["image_size"] == 28
