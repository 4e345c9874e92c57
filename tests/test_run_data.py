"""engine.data.build_run_data: what a run learns about its data comes from the streams' `info`,
the same under every loader backend, and the held-out set is the one shared conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data import build_run_data, heldout_subset, primary_normalization
from engine.models.wideresnet import CIFAR10_MEAN, CIFAR10_STD
from loaders.beton import BetonIndex, beton_info, read_manifest, write_beton
from loaders.sources.shapes import make_shapes
from tests.fixtures_backends import BACKENDS, IN_MEMORY_BACKENDS

AUX_SPEC = "shapes:aux?n=24&size=16&seed=2"
PRIMARY_SPEC = "shapes:primary?n=32&size=16"
TEST_SPEC = "shapes:primary?n=20&size=16"


def run_data(loader: str, primary: str, aux: list[str]):
    data = DataConfig(primary=primary, aux=aux, test=TEST_SPEC, loader=loader, batch_size=8,
                      aux_batch_size=9, num_workers=1)
    return build_run_data(data, use_aux=True, device=torch.device("cpu"), seed=0, eval_n=12, kernel_impl="torch")


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-data")
    paths = {}
    for kind, n, seed in (("primary", 32, 0), ("aux", 24, 2), ("aux", 20, 3)):
        paths[kind, seed] = root / f"{kind}-{seed}.beton"
        write_beton(paths[kind, seed], make_shapes(kind, "train", n=n, size=16, seed=seed), format="shapes")
    return paths


@pytest.mark.parametrize("loader", BACKENDS)
def test_the_aux_facts_come_from_the_beton_whatever_the_loader(betons, loader):
    aux = [str(betons["aux", 2]), str(betons["aux", 3])]
    run = run_data(loader, str(betons["primary", 0]), aux)
    manifests = [read_manifest(p) for p in aux]
    assert run.num_classes == 10 and run.aux_classes == (20, 20)
    assert run.aux_names == ["shapes-aux", "shapes-aux"]
    assert run.aux_class_names == [m["class_names"] for m in manifests]
    assert run.aux_related == [m["related"] for m in manifests]
    assert run.stream.aux_sizes == (5, 4)  # aux_batch_size 9 over two datasets
    assert run.class_names == make_shapes("primary", "test", n=20, size=16).class_names


@pytest.mark.parametrize("loader", IN_MEMORY_BACKENDS)
def test_a_generated_aux_set_reports_its_own_facts_under_the_in_memory_loaders(loader):
    # DALI streams used to fall back to the spec as the name and numbered classes here.
    run = run_data(loader, PRIMARY_SPEC, [AUX_SPEC])
    generated = make_shapes("aux", "train", n=24, size=16, seed=2)
    assert run.aux_names == [generated.name]
    assert run.aux_class_names == [generated.class_names]
    assert run.aux_related == [generated.meta["related"]]


def test_the_heldout_set_is_the_converted_subset_of_the_test_split():
    run = run_data("resident", PRIMARY_SPEC, [AUX_SPEC])
    test = make_shapes("primary", "test", n=20, size=16)
    index = heldout_subset(test, 12, 0)
    expected = test.images[index].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(run.heldout_x.numpy(), expected)
    assert run.heldout_x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(run.heldout_y.numpy(), test.labels[index])


def test_the_model_normalises_with_the_primary_datas_own_statistics(betons):
    primary = str(betons["primary", 0])
    run = run_data("resident", primary, [])
    stats = read_manifest(primary)
    assert run.normalization.mean == tuple(stats["channel_mean"])
    assert run.normalization.std == tuple(stats["channel_std"])
    assert run.normalization.mean != pytest.approx(CIFAR10_MEAN, abs=1e-3)  # shapes are not CIFAR-10
    assert "shapes-primary" in run.normalization.source and primary in run.normalization.source


@pytest.mark.parametrize("mode, mean, std, kind", [("cifar10", CIFAR10_MEAN, CIFAR10_STD, "per-channel"),
                                                   ("none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "per-channel"),
                                                   ("per-image", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "per-image")])
def test_fixed_normalisations_stay_available(mode, mean, std, kind):
    info = make_shapes("primary", "train", n=8, size=16).info
    norm = primary_normalization(mode, PRIMARY_SPEC, info)
    assert (norm.mean, norm.std, norm.kind) == (tuple(mean), tuple(std), kind) and mode in norm.source


def test_a_manifest_from_before_the_statistics_were_recorded_has_them_computed(betons, tmp_path, caplog):
    import json
    import shutil

    old = tmp_path / "old.beton"
    shutil.copy(betons["primary", 0], old)
    manifest = read_manifest(betons["primary", 0])
    stripped = {k: v for k, v in manifest.items() if k not in ("channel_mean", "channel_std")}
    (tmp_path / "old.beton.json").write_text(json.dumps(stripped))
    info = beton_info(BetonIndex(old))
    assert info.channel_stats is None
    norm = primary_normalization("primary", str(old), info)
    assert norm.mean == pytest.approx(manifest["channel_mean"], rel=1e-12)
    assert norm.std == pytest.approx(manifest["channel_std"], rel=1e-12)
    assert "prepare" in caplog.text and "predates" in norm.source
