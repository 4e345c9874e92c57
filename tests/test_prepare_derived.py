"""`prepare --parts / --part / --uniform-noise` and the `concat` format (the paper's Appendix B):
parts disjoint, covering, of the asked sizes and class-stratified; noise of the asked amplitude
that reproduces from its seed; joined files that read back as their parts; manifests that say
so; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from loaders.beton import read_beton, read_manifest
from loaders.sources import SourceError
from loaders.sources.derive import add_uniform_noise, split_parts, stratified_order
from loaders.types import ArrayDataset
from tests.fixtures_formats import write_cifar10


def unbalanced(n: int = 120, size: int = 4, seed: int = 0) -> ArrayDataset:
    """Images that carry their own index in pixel 0 (so a part's images say where they came
    from), with classes of unequal counts."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return ArrayDataset(images, labels, [f"c{i}" for i in range(4)], "toy", {"source_sha256": "abc"})


def origin(data: ArrayDataset) -> np.ndarray:
    return data.images[:, 0, 0, 0].astype(int) + 256 * data.images[:, 0, 0, 1].astype(int)


def invoke(*args: str):
    return CliRunner().invoke(app, ["prepare", *map(str, args)])


def flat(output: str) -> str:
    """The output as one line, without rich's wrapping and box borders."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize("sizes", [[60, 30, 30], [50, 37, 20], [1, 119]])
def test_parts_are_disjoint_cover_the_set_and_hold_each_class_in_proportion(sizes):
    data = unbalanced()
    parts = split_parts(data, sizes, seed=3)
    assert [len(p) for p in parts] == sizes and [p.name for p in parts] == ["toy-A", "toy-B", "toy-C"][:len(sizes)]
    taken = [origin(p) for p in parts]
    for p, idx in zip(parts, taken):
        np.testing.assert_array_equal(p.labels, data.labels[idx])  # images keep their labels
        assert p.meta["parts"]["index"] == idx.tolist()
    together = np.concatenate(taken)
    assert len(np.unique(together)) == len(together)  # disjoint
    if sum(sizes) == len(data):
        assert sorted(together) == list(range(len(data)))  # and covering
    counts = np.bincount(data.labels, minlength=4)
    for p in parts:  # within one image per class of the part's share (2 at the boundaries of both cuts)
        share = counts * len(p) / len(data)
        assert np.abs(np.bincount(p.labels, minlength=4) - share).max() <= 2


def test_cifar_sized_parts_are_exactly_stratified():
    # The Table 5 split of a balanced set (5000 per class -> 2500 / 1250 / 1250), scaled down.
    labels = np.repeat(np.arange(10), 40)
    order = stratified_order(labels, seed=0)
    parts = np.split(order, [200, 300])
    assert [np.bincount(labels[p], minlength=10).tolist() for p in parts] == [[20] * 10, [10] * 10, [10] * 10]


def test_the_split_reproduces_from_its_seed_and_changes_with_it():
    data = unbalanced()
    same = [origin(p) for p in split_parts(data, [60, 60], seed=5)]
    again = [origin(p) for p in split_parts(data, [60, 60], seed=5)]
    other = [origin(p) for p in split_parts(data, [60, 60], seed=6)]
    assert all(np.array_equal(a, b) for a, b in zip(same, again))
    assert not np.array_equal(same[0], other[0])


def test_uniform_noise_has_the_asked_amplitude_and_reproduces_from_its_seed():
    grey = ArrayDataset(np.full((200, 8, 8, 3), 128, np.uint8), np.zeros(200, np.int64), ["c"], "grey")
    noisy = add_uniform_noise(grey, 20, seed=1)
    diff = noisy.images.astype(int) - 128
    assert diff.min() == -20 and diff.max() == 20  # reached on 38400 pixels, never passed
    assert abs(diff.mean()) < 0.3 and abs(diff.std() - 20 / np.sqrt(3)) < 0.3  # uniform: std A / sqrt(3)
    assert len(np.unique(diff)) == 41
    np.testing.assert_array_equal(add_uniform_noise(grey, 20, seed=1).images, noisy.images)
    assert not np.array_equal(add_uniform_noise(grey, 20, seed=2).images, noisy.images)
    assert not np.array_equal(add_uniform_noise(grey, 20, seed=1, stream=1).images, noisy.images)
    assert noisy.name == "grey-noise20" and noisy.meta["uniform_noise"]["amplitude"] == 20
    assert np.array_equal(grey.images, np.full((200, 8, 8, 3), 128))  # the input is left alone
    edges = ArrayDataset(np.array([0, 255], np.uint8).repeat(96).reshape(2, 8, 4, 3), np.zeros(2, np.int64), ["c"])
    clipped = add_uniform_noise(edges, 255, seed=0).images  # clipped into 0-255, never wrapped
    assert clipped[0].max() > 0 and clipped[1].min() < 255
    with pytest.raises(SourceError, match="--uniform-noise 0: expected an amplitude in \\(0, 255\\]"):
        add_uniform_noise(grey, 0, seed=0)


def test_prepare_writes_the_table5_parts_and_their_manifests(tmp_path):
    source, arrays = write_cifar10(tmp_path / "raw", per_batch=8)  # 40 training images
    out = tmp_path / "cifar.beton"
    done = invoke("cifar10", source, out, "--parts", "20,10,10", "--seed", "4")
    assert done.exit_code == 0, done.output
    images, labels = arrays["train"]
    seen = []
    for name, size in zip("ABC", (20, 10, 10)):
        path = tmp_path / f"cifar-{name}.beton"
        part, manifest = read_beton(path), read_manifest(path)
        index = manifest["meta"]["parts"]["index"]
        assert manifest["count"] == size and manifest["name"] == f"cifar10-train-{name}"
        assert {k: manifest["meta"]["parts"][k] for k in ("sizes", "seed", "part", "of")} == {
            "sizes": [20, 10, 10], "seed": 4, "part": name, "of": 40}
        np.testing.assert_array_equal(part.images, images[index])
        np.testing.assert_array_equal(part.labels, labels[index])
        seen += index
    assert sorted(seen) == list(range(40))

    # One part alone, with noise: the same images as that part of the full split, plus noise
    # that the manifest records and the same command draws again.
    def noisy_part_c(path):
        done = invoke("cifar10", source, path, "--parts", "20,10,10", "--seed", "4", "--part", "c",
                      "--uniform-noise", "64")
        assert done.exit_code == 0, done.output
        return read_beton(path).images

    noisy = tmp_path / "cifar-C-noise.beton"
    first = noisy_part_c(noisy)
    np.testing.assert_array_equal(noisy_part_c(tmp_path / "again.beton"), first)
    diff = first.astype(int) - read_beton(tmp_path / "cifar-C.beton").images
    assert np.abs(diff).max() <= 64 and diff.std() > 20
    meta = read_manifest(noisy)["meta"]
    assert meta["parts"]["part"] == "C" and meta["uniform_noise"]["amplitude"] == 64.0
    assert meta["uniform_noise"]["seed"] == 4


def test_concat_joins_prepared_files_and_records_them(tmp_path):
    data = unbalanced()
    from loaders.beton import write_beton

    a, b = split_parts(data, [70, 50], seed=0)
    write_beton(tmp_path / "a.beton", a)
    write_beton(tmp_path / "b.beton", b)
    out = tmp_path / "ab.beton"
    done = invoke("concat", f"{tmp_path / 'a.beton'},{tmp_path / 'b.beton'}", out)
    assert done.exit_code == 0, done.output
    joined, manifest = read_beton(out), read_manifest(out)
    np.testing.assert_array_equal(joined.images, np.concatenate([a.images, b.images]))
    np.testing.assert_array_equal(joined.labels, np.concatenate([a.labels, b.labels]))
    assert manifest["name"] == "toy-A+toy-B" and manifest["count"] == 120
    assert [(c["name"], c["count"]) for c in manifest["meta"]["concat"]] == [("toy-A", 70), ("toy-B", 50)]
    assert manifest["meta"]["concat"][1]["meta"]["parts"]["part"] == "B"

    other = ArrayDataset(data.images[:5], data.labels[:5], ["w", "x", "y", "z"], "other")
    write_beton(tmp_path / "o.beton", other)
    refused = invoke("concat", f"{tmp_path / 'a.beton'},{tmp_path / 'o.beton'}", tmp_path / "ao.beton")
    assert refused.exit_code == 1 and "only splits of one dataset can be joined" in flat(refused.output)
    alone = invoke("concat", tmp_path / "a.beton", tmp_path / "x.beton")
    assert alone.exit_code == 1 and "two or more .beton files" in flat(alone.output)
    assert not (tmp_path / "ao.beton").exists() and not (tmp_path / "x.beton").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--part", "B"], 2, "give --parts SIZES too"),
    (["--parts", "50,x"], 1, "expected positive part sizes"),
    (["--parts", "50,50", "--part", "C"], 1, "--part 'C': expected one of A, B"),
    (["--parts", "50,60"], 1, "110 images asked for, shapes-primary holds 100"),
    (["--uniform-noise", "300"], 1, "--uniform-noise 300: expected an amplitude in (0, 255]"),
])
def test_bad_part_and_noise_options_are_named(tmp_path, args, code, message):
    done = invoke("shapes", "primary", tmp_path / "s.beton", "--n", "100", *args)
    assert done.exit_code == code and message in flat(done.output), done.output
    assert not list(tmp_path.glob("*.beton"))


def test_a_manifest_is_json_with_the_split_recorded(tmp_path):
    done = invoke("shapes", "primary", tmp_path / "s.beton", "--n", "30", "--parts", "20,10")
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "s-B.beton.json").read_text())
    assert manifest["class_counts"] == np.bincount(read_beton(tmp_path / "s-B.beton").labels, minlength=10).tolist()
    assert len(manifest["meta"]["parts"]["index"]) == 10
