"""The built-in shapes datasets and dataset-spec resolution."""

import numpy as np
import pytest

from loaders.datasets import open_dataset
from loaders.sources.shapes import SHAPE_NAMES, class_names, make_shapes


def test_same_arguments_give_identical_arrays_and_seeds_differ():
    a = make_shapes("aux", "train", n=300, seed=5)
    b = make_shapes("aux", "train", n=300, seed=5)
    c = make_shapes("aux", "train", n=300, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("kind,classes", [("primary", 10), ("aux", 20)])
def test_default_sizes_dtypes_and_balanced_classes(kind, classes):
    train, test = make_shapes(kind, "train"), make_shapes(kind, "test", size=24)
    assert train.images.shape == (5000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (1000, 24, 24, 3)
    assert train.labels.dtype == np.int64 and train.num_classes == classes
    for ds in (train, test):
        counts = np.bincount(ds.labels, minlength=classes)
        assert counts.max() - counts.min() <= 1
    # Labels are shuffled, not in blocks of one class.
    assert len(np.unique(train.labels[:classes])) > 1
    # Images use the whole intensity range (backgrounds and shapes are not all alike).
    assert train.images.min() == 0 and train.images.max() == 255


def test_aux_meta_marks_half_related_with_matching_names():
    aux = make_shapes("aux", "test", n=40, seed=2)
    related = aux.meta["related"]
    assert len(related) == aux.num_classes >= 20
    assert sum(related) == aux.num_classes // 2
    assert aux.meta["kind"] == "aux" and aux.meta["split"] == "test" and aux.meta["seed"] == 2
    for name, is_related in zip(aux.class_names, related):
        assert is_related == any(name.startswith(s + "-") for s in SHAPE_NAMES), name
        assert is_related != name.startswith("texture-"), name
    assert class_names("primary") == make_shapes("primary", n=10).class_names == SHAPE_NAMES


def test_train_and_test_splits_differ():
    train = make_shapes("primary", "train", n=200)
    test = make_shapes("primary", "test", n=200)
    flat_train = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in flat_train for img in test.images)


def _foreground_maps(images: np.ndarray) -> np.ndarray:
    """(N, S, S): each pixel's colour distance from the image's border (background) colour,
    normalised per image, so a shape shows up as a blob wherever it is drawn."""
    x = images.astype(np.float32) / 255
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (N, 4S, 3)
    dist = np.linalg.norm(x - np.median(border, axis=1)[:, None, None, :], axis=-1)
    return dist / (dist.mean(axis=(1, 2), keepdims=True) + 1e-6)


def _class_layouts(ds) -> np.ndarray:
    """(C, S*S) per-class mean foreground map, centred and unit-norm (for correlations)."""
    maps = _foreground_maps(ds.images)
    means = np.stack([maps[ds.labels == c].mean(0).ravel() for c in range(ds.num_classes)])
    means -= means.mean(1, keepdims=True)
    return means / (np.linalg.norm(means, axis=1, keepdims=True) + 1e-9)


def test_related_aux_classes_resemble_primary_shapes_and_unrelated_do_not():
    primary = make_shapes("primary", "train", n=600, seed=1)
    aux = make_shapes("aux", "train", n=1200, seed=1)
    corr = _class_layouts(aux) @ _class_layouts(primary).T  # (aux classes, primary classes)
    related = np.array(aux.meta["related"])
    best_unrelated = corr[~related].max()
    # Each related class looks more like its own primary shape than any texture class looks
    # like any primary shape: the related classes carry the primary's foreground structure.
    own_shape = corr[related, np.arange(related.sum())]
    assert own_shape.min() > best_unrelated + 0.2, (own_shape, best_unrelated)


def test_bad_kind_or_split_names_the_choices():
    with pytest.raises(ValueError, match="primary"):
        make_shapes("tertiary")
    with pytest.raises(ValueError, match="train"):
        make_shapes("primary", "validation")


def test_open_dataset_parses_shapes_options():
    ds = open_dataset("shapes:aux?n=60&size=16&seed=3", "test")
    ref = make_shapes("aux", "test", n=60, size=16, seed=3)
    np.testing.assert_array_equal(ds.images, ref.images)
    assert open_dataset("shapes:primary", "test").images.shape == (1000, 32, 32, 3)


def test_open_dataset_reads_npz_round_trip(tmp_path):
    src = make_shapes("primary", n=30, size=16)
    path = tmp_path / "small.npz"
    np.savez(path, images=src.images, labels=src.labels, class_names=np.array(src.class_names))
    ds = open_dataset(str(path), "train")
    np.testing.assert_array_equal(ds.images, src.images)
    np.testing.assert_array_equal(ds.labels, src.labels)
    assert ds.class_names == src.class_names
    np.savez(tmp_path / "nonames.npz", images=src.images, labels=src.labels)
    assert open_dataset(str(tmp_path / "nonames.npz"), "train").num_classes == src.labels.max() + 1
    np.savez(tmp_path / "nolabels.npz", images=src.images)
    with pytest.raises(ValueError, match="labels"):
        open_dataset(str(tmp_path / "nolabels.npz"), "train")


@pytest.mark.parametrize("spec,message", [
    ("missing/file.beton", "no such file"),
    ("missing/file.npz", "no such file"),
    ("cifar10", "shapes:primary"),
    ("shapes:tertiary", "shapes:aux"),
    ("shapes:aux?count=3", "key in"),
    ("shapes:aux?n=many", "integer"),
])
def test_open_dataset_errors_name_the_spec_and_forms(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        open_dataset(spec, "train")
    assert repr(spec) in str(info.value)
