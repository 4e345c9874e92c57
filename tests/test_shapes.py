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
    assert class_names("primary") == make_shapes("primary", n=10).class_names == SHAPE_NAMES[:10]


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


# ---------------------------------------------------------------- difficulty and classes knobs

@pytest.mark.parametrize("kind", ["primary", "aux"])
def test_knobs_are_deterministic_and_change_the_images(kind):
    a = make_shapes(kind, "train", n=120, size=16, seed=4, difficulty=2, classes=16)
    b = make_shapes(kind, "train", n=120, size=16, seed=4, difficulty=2, classes=16)
    assert a.images.tobytes() == b.images.tobytes() and a.labels.tobytes() == b.labels.tobytes()
    assert not np.array_equal(a.images, make_shapes(kind, "train", n=120, size=16, seed=4, difficulty=3,
                                                    classes=16).images)
    # The defaults are difficulty 0 and 10 classes: the original sets.
    plain = make_shapes(kind, "train", n=60, size=16, seed=4)
    assert plain.images.tobytes() == make_shapes(kind, "train", n=60, size=16, seed=4, difficulty=0,
                                                 classes=10).images.tobytes()
    assert a.meta["difficulty"] == 2 and a.meta["classes"] == 16 and plain.meta["difficulty"] == 0
    assert a.meta["difficulty_settings"]["clutter"] == 2


def test_classes_knob_sets_the_primary_and_related_auxiliary_classes():
    primary = make_shapes("primary", "test", n=64, size=16, classes=16)
    aux = make_shapes("aux", "test", n=64, size=16, classes=16, difficulty=1)
    assert primary.class_names == SHAPE_NAMES[:16] and primary.num_classes == 16
    assert aux.num_classes == 26 and sum(aux.meta["related"]) == 16
    assert aux.meta["related_to"][:16] == SHAPE_NAMES[:16] and aux.meta["related_to"][16:] == [None] * 10
    # Unrelated class j shares (only) the colour/signature statistics of primary class j mod 16.
    assert aux.meta["shares_statistics_of"][16:] == SHAPE_NAMES[:10]
    assert make_shapes("primary", n=30, size=16, classes=3).class_names == SHAPE_NAMES[:3]


@pytest.mark.parametrize("difficulty", [0, 1, 3])
def test_a_related_auxiliary_class_draws_its_primary_class_shape_family(difficulty, monkeypatch):
    from loaders.sources import shapes

    drawn: dict[str, set] = {"primary": set(), "aux": set()}
    render = shapes._render_shape

    def spy(name, m, *args, **kwargs):
        drawn[kind].add((name, m))
        return render(name, m, *args, **kwargs)

    monkeypatch.setattr(shapes, "_render_shape", spy)
    kind = "primary"
    primary = make_shapes("primary", "train", n=160, size=16, difficulty=difficulty, classes=16)
    kind = "aux"
    aux = make_shapes("aux", "train", n=260, size=16, difficulty=difficulty, classes=16)
    # The labelled shape of primary class k and of related auxiliary class k is family k; the
    # unrelated classes draw no labelled shape at all (their images are textures).
    per_class = lambda ds: {(ds.class_names[c].removesuffix("-textured"), int((ds.labels == c).sum()))  # noqa: E731
                            for c in range(16)}
    assert drawn["primary"] == per_class(primary)
    assert drawn["aux"] == per_class(aux)


def test_related_aux_classes_resemble_their_primary_shapes_under_clutter():
    primary = make_shapes("primary", "train", n=1000, seed=1, difficulty=3)
    aux = make_shapes("aux", "train", n=2000, seed=1, difficulty=3)
    corr = _class_layouts(aux) @ _class_layouts(primary).T  # (20 aux classes, 10 primary classes)
    related = np.array(aux.meta["related"])
    own_shape = corr[related, np.arange(10)]
    assert own_shape.min() > corr[~related].max(), (own_shape, corr[~related].max())


def _signature_scores(ds, classes: int) -> np.ndarray:
    """(C, C): how strongly the mean image of class c (minus the overall mean) projects on the
    signature of class k."""
    from loaders.sources.shapes import _grid, _signature

    x = ds.images.astype(np.float32) / 255
    grid = _grid(x.shape[1])
    sigs = np.stack([_signature(k, grid).ravel() for k in range(classes)])  # (C, S*S*3)
    sigs /= np.linalg.norm(sigs, axis=1, keepdims=True)
    centred = np.stack([x[ds.labels == c].mean(0).ravel() for c in range(classes)]) - x.mean(0).ravel()
    return centred @ sigs.T


def test_the_class_signature_predicts_the_label_on_train_but_not_on_test():
    train = make_shapes("primary", "train", n=1600, size=16, seed=2, difficulty=3, classes=16)
    test = make_shapes("primary", "test", n=1600, size=16, seed=2, difficulty=3, classes=16)
    on_train, on_test = _signature_scores(train, 16), _signature_scores(test, 16)
    assert (on_train.argmax(1) == np.arange(16)).all()
    # On test the signatures are drawn at random: the own-class score is no larger than the rest.
    assert np.diag(on_test).mean() < 0.25 * np.diag(on_train).mean()
    # The unrelated auxiliary classes carry their assigned primary class's signature.
    aux = make_shapes("aux", "train", n=2600, size=16, seed=2, difficulty=3, classes=16)
    scores = _signature_scores(aux, 26)[16:, :16]
    assert (scores.argmax(1) == np.arange(10)).all()


@pytest.mark.parametrize("knobs,message", [({"difficulty": 4}, "difficulty"), ({"classes": 17}, "classes"),
                                           ({"classes": 1}, "classes")])
def test_bad_knobs_name_the_knob_and_range(knobs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes("primary", n=8, **knobs)


def test_prepare_records_the_knobs_in_the_manifest_and_a_spec_reads_the_same_images(tmp_path):
    import json

    from typer.testing import CliRunner

    from cli.app import app

    out = tmp_path / "hard.beton"
    done = CliRunner().invoke(app, ["prepare", "shapes", "aux", str(out), "--size", "32", "--seed", "3",
                                    "--n", "52", "--difficulty", "2", "--classes", "12"])
    assert done.exit_code == 0, done.output
    meta = json.loads(out.with_suffix(".beton.json").read_text())["meta"]
    assert (meta["difficulty"], meta["classes"], meta["seed"]) == (2, 12, 3)
    assert meta["difficulty_settings"]["noise"] == 0.10
    ref = open_dataset("shapes:aux?n=52&seed=3&difficulty=2&classes=12", "train")
    np.testing.assert_array_equal(open_dataset(str(out), "train").images, ref.images)
    refused = CliRunner().invoke(app, ["prepare", "cifar10", str(tmp_path), str(tmp_path / "c.beton"),
                                       "--difficulty", "2"])
    assert refused.exit_code == 1 and "shapes format only" in refused.output


# ---------------------------------------------------------------- groups knob (study's stand-ins)

@pytest.mark.parametrize("groups,related", [("related", True), ("unrelated", False)])
def test_groups_keeps_one_kind_of_auxiliary_class_drawn_as_in_the_full_set(groups, related, monkeypatch):
    from loaders.sources import shapes

    full = make_shapes("aux", "train", n=400, size=16, seed=2, difficulty=1, classes=6)
    drawn = []  # (class index the renderer drew, images drawn)
    render = shapes._render

    def spy(kind, label, m, *args):
        drawn.append((label, m))
        return render(kind, label, m, *args)

    monkeypatch.setattr(shapes, "_render", spy)
    part = make_shapes("aux", "train", n=200, size=16, seed=2, difficulty=1, classes=6, groups=groups)
    expected = [name for name, r in zip(full.class_names, full.meta["related"]) if r == related]
    assert part.class_names == expected and len(expected) == (6 if related else 10)
    assert part.meta["related"] == [related] * len(expected) and part.meta["groups"] == groups
    assert part.meta["related_to"] == [n.removesuffix("-textured") if related else None for n in expected]
    assert part.meta["shares_statistics_of"] == [
        s for s, r in zip(full.meta["shares_statistics_of"], full.meta["related"]) if r == related]
    counts = np.bincount(part.labels, minlength=len(expected))
    assert len(counts) == len(expected) and counts.max() - counts.min() <= 1
    # Each kept class is drawn by the renderer of its namesake in the full set, for its images.
    assert drawn == [(full.class_names.index(name), int(counts[c])) for c, name in enumerate(expected)]


def test_groups_all_is_the_default_set_and_bad_groups_are_named():
    a = make_shapes("aux", "test", n=50, size=16, seed=1)
    b = open_dataset("shapes:aux?n=50&size=16&seed=1&groups=all", "test")
    np.testing.assert_array_equal(a.images, b.images)
    assert "groups" not in a.meta
    c = open_dataset("shapes:aux?n=50&size=16&seed=1&groups=unrelated", "test")
    assert c.class_names == [n for n in a.class_names if n.startswith("texture-")]
    with pytest.raises(ValueError, match="expected one of all, related, unrelated"):
        make_shapes("aux", n=10, size=16, groups="some")
    with pytest.raises(ValueError, match="aux kind only"):
        make_shapes("primary", n=10, size=16, groups="related")


def test_shapes_spec_round_trips_through_the_parser():
    from loaders.datasets import parse_shapes_spec, shapes_spec

    options = {"n": 40, "size": 16, "seed": 2, "groups": "related"}
    assert parse_shapes_spec(shapes_spec("aux", options)) == ("aux", options)
    assert shapes_spec("primary", {}) == "shapes:primary"
