"""A .beton written by FFCV's own DatasetWriter, with no manifest beside it: what the manifest
would hold (count, image size, classes from the label range) is read from the file itself, the
run says the class names are unknown, and it trains and evaluates through the CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("ffcv", reason="the ffcv extra is not installed")


class _Pairs:
    """An indexable dataset of (image, label) pairs, as FFCV's DatasetWriter takes them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def write_with_ffcv(path, n: int, size: int = 16, classes: int = 4, seed: int = 0):
    """(images, labels) written to `path` by ffcv.writer.DatasetWriter, as FFCV's own tests do."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    writer = DatasetWriter(str(path), {"image": RGBImageField(), "label": IntField()}, num_workers=1)
    writer.from_indexed_dataset(_Pairs(images, labels))
    return images, labels


def test_a_beton_from_ffcv_reads_back_with_what_the_file_says(tmp_path, caplog):
    from loaders.beton import iter_beton, read_beton

    path = tmp_path / "ffcv-made.beton"
    images, labels = write_with_ffcv(path, n=20, classes=5)
    assert not path.with_name("ffcv-made.beton.json").exists()
    with caplog.at_level(logging.WARNING, logger="loaders.beton"):
        data = read_beton(path)
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.class_names == ["0", "1", "2", "3", "4"] and data.image_size == 16
    assert data.meta["class_names_known"] is False
    assert "class names unknown" in caplog.text and "5 classes from its labels 0..4" in caplog.text
    chunks = list(iter_beton(path, rows=8))
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), images)


def test_negative_labels_in_a_beton_without_manifest_are_refused(tmp_path):
    from loaders.beton import read_beton

    path = tmp_path / "neg.beton"
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    images = np.zeros((4, 8, 8, 3), np.uint8)
    DatasetWriter(str(path), {"image": RGBImageField(), "label": IntField()}, num_workers=1).from_indexed_dataset(
        _Pairs(images, np.array([0, 1, -1, 2])))
    with pytest.raises(ValueError, match=r"neg\.beton: labels must be class ids from 0, found -1"):
        read_beton(path)


@pytest.mark.parametrize("loader", ["ffcv", "resident"])
def test_a_beton_from_ffcv_trains_one_epoch_and_evaluates(tmp_path, loader, caplog):
    from cli.app import app

    train, test = tmp_path / "train.beton", tmp_path / "test.beton"
    write_with_ffcv(train, n=32, seed=1)
    write_with_ffcv(test, n=16, seed=2)
    run = tmp_path / "run"
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    settings = ["data.batch_size=16", "data.num_workers=1", "attack.steps=1", "runtime.compile=off",
                "eval.n=8", "eval.steps=1"]
    with caplog.at_level(logging.WARNING, logger="loaders.beton"):
        result = runner.invoke(app, [
            "train", "--primary", str(train), "--test", str(test), "--aux-mode", "none", "--model", "wrn-10-1",
            "--epochs", "1", "--loader", loader, "--device", "cpu", "--out", str(run),
            *[arg for item in settings for arg in ("--set", item)]])
    assert result.exit_code == 0, result.output
    (line,) = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["step"] == 2
    card = json.loads((run / "model.json").read_text())
    assert card["class_names"] == ["0", "1", "2", "3"] and card["image_size"] == 16
    assert f"{train}: no manifest beside it" in caplog.text and "class names unknown" in caplog.text

    result = runner.invoke(app, ["eval", str(run), "--test", str(test), "--attacks", "clean", "--device", "cpu",
                                 "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == 16 and report["clean_correct"] == round(16 * report["clean_acc"])
