"""The loader seam: every backend takes the same arguments and `LoaderOptions`, and reports the
same `DatasetInfo` for the same .beton."""

from __future__ import annotations

import inspect

import pytest

from loaders.backends.dali_backend import DaliStream
from loaders.backends.ffcv_backend import FfcvStream
from loaders.backends.resident import ResidentStream
from loaders.beton import BetonIndex, beton_info, read_manifest, write_beton
from loaders.datasets import make_stream
from loaders.options import LoaderOptions
from loaders.sources.shapes import make_shapes
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
