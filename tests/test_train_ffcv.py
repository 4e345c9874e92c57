"""`train --loader ffcv` from .beton files written by the engine's own writer."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("ffcv", reason="the ffcv extra is not installed")


def _train(tmp_path, loader: str, data: dict) -> dict:
    from cli.app import app

    out = tmp_path / loader
    settings = ["data.batch_size=16", "data.aux_batch_size=8", "data.num_workers=1", "attack.steps=1",
                "method.warmup_epochs=0", "runtime.compile=off", "eval.n=8", "eval.steps=1"]
    result = CliRunner().invoke(app, [
        "train", "--primary", str(data["primary"]), "--aux", str(data["aux"]), "--test", str(data["test"]),
        "--model", "wrn-10-1", "--epochs", "1", "--loader", loader, "--device", "cpu", "--out", str(out),
        *[arg for item in settings for arg in ("--set", item)],
    ])
    assert result.exit_code == 0, result.output
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(line)


def test_a_training_epoch_with_loader_ffcv_matches_the_resident_loader(tmp_path):
    from loaders.beton import write_beton
    from loaders.sources.shapes import make_shapes

    data = {}
    for role, kind, split, n in (("primary", "primary", "train", 32), ("aux", "aux", "train", 24),
                                 ("test", "primary", "test", 16)):
        data[role] = tmp_path / f"{role}.beton"
        write_beton(data[role], make_shapes(kind, split, n=n, size=16), format="shapes", split=split)

    ffcv = _train(tmp_path, "ffcv", data)
    assert ffcv["epoch"] == 1 and ffcv["step"] == 2
    assert (tmp_path / "ffcv" / "model.safetensors").is_file()
    selection = [json.loads(line) for line in (tmp_path / "ffcv" / "selection.jsonl").read_text().splitlines()]
    # The auxiliary class names and related flags come from the .beton manifest.
    assert selection and selection[0]["class_names"][0] == "circle-textured"
    assert sum(selection[0]["related"]) == len(selection[0]["related"]) // 2
    # FFCV seeds its crops per sample and the resident backend per batch, so the two runs see
    # different augmentations of the same images: close losses, not equal ones.
    resident = _train(tmp_path, "resident", data)
    for key in ("loss", "loss_pri", "loss_high"):
        assert ffcv[key] == pytest.approx(resident[key], rel=0.1), key


def test_a_label_outside_the_classes_stops_every_loader_before_the_run_directory(tmp_path):
    """A .beton whose labels reach past its class list (here: a manifest cut to 5 of 10 classes)
    is refused by the ffcv backend as by the others, naming the file, before RUN_DIR exists."""
    from cli.app import app
    from loaders.beton import write_beton
    from loaders.sources.shapes import make_shapes

    data = {}
    for role, kind, split, n in (("primary", "primary", "train", 32), ("test", "primary", "test", 16)):
        data[role] = tmp_path / f"{role}.beton"
        write_beton(data[role], make_shapes(kind, split, n=n, size=16), format="shapes", split=split)
    manifest_path = tmp_path / "primary.beton.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["class_names"] = manifest["class_names"][:5]
    manifest_path.write_text(json.dumps(manifest))
    for loader in ("ffcv", "resident", "dali"):
        out = tmp_path / f"run-{loader}"
        result = CliRunner().invoke(app, [
            "train", "--primary", str(data["primary"]), "--test", str(data["test"]), "--model", "wrn-10-1",
            "--epochs", "1", "--loader", loader, "--device", "cpu", "--out", str(out), "--aux-mode", "none",
            "--set", "data.num_workers=1"])
        assert result.exit_code == 1, (loader, result.output)
        assert "labels must lie in [0, 5)" in result.output, (loader, result.output)
        assert not out.exists(), loader
