"""Pseudo-labelled auxiliary data (Carmon et al., paper Table 3 / Table 7): `pseudo-label` against
an independent top-K selection, its manifest, its errors and CLI exit codes, and a training run
in aux_mode pseudo on what it wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cli.app import app
from engine.checkpoint import export_model
from engine.config import ConfigError
from engine.models import build, load, model_card, primary_state_dict
from engine.pseudo_label import pseudo_label, top_k_per_class
from engine.scoring import Scores
from loaders.beton import iter_beton, read_beton, read_manifest, write_beton
from loaders.images import to_device_images
from loaders.sources.shapes import make_shapes
from loaders.types import ArrayDataset

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE, CLASSES, N_AUX = 16, 4, 120
NAMES = ["cat", "dog", "ship", "truck"]
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def colour_images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: one random colour per image plus noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.integers(-40, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)


def write_model(folder: Path, num_classes: int = CLASSES, names=NAMES, image_size: int = SIZE) -> Path:
    """A tiny classifier folder (model.safetensors + model.json), as a run exports it, whose
    predictions spread over the classes with clearly different confidences (an untrained net
    puts every image in one class: all its pooled features share one positive mean)."""
    torch.manual_seed(3)
    model = build("wrn-10-1", num_classes, (7,)).eval()  # an auxiliary head, as a BiaMAT checkpoint has
    with torch.no_grad():
        feats = model.features(to_device_images(colour_images(64, image_size, seed=99), "cpu"))  # (64, D)
        model.fc.weight.mul_(3.0)
        model.fc.bias.copy_(-model.fc.weight @ feats.mean(0))
    export_model(folder, primary_state_dict(model), model_card(model, "wrn-10-1", names, image_size=image_size))
    return folder


def write_aux(path: Path, n: int = N_AUX, size: int = SIZE, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    data = ArrayDataset(colour_images(n, size, seed), rng.integers(0, 9, n), [f"aux{i}" for i in range(9)], "tiny-aux")
    write_beton(path, data, format="arrays")
    return data


@pytest.fixture
def files(tmp_path):
    model = write_model(tmp_path / "model")
    aux = write_aux(tmp_path / "aux.beton")
    return model, tmp_path / "aux.beton", aux, tmp_path


def reference_scores(model_dir: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmax class and max softmax of every image, in one plain batch."""
    model = load(model_dir)
    with torch.no_grad():
        probs = F.softmax(model(to_device_images(images, "cpu")), dim=1)
    return probs.argmax(1).numpy(), probs.amax(1).numpy()


def reference_top_k(pred: np.ndarray, conf: np.ndarray, k: int) -> np.ndarray:
    kept = []
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        kept.extend(members[np.argsort(-conf[members], kind="stable")[:k]])
    return np.sort(np.array(kept, dtype=np.int64))


def test_top_k_keeps_the_k_most_confident_per_class_earlier_first_on_ties():
    scores = Scores(predicted=np.array([0, 1, 0, 0, 1, 2, 0]),
                    confidence=np.array([0.5, 0.9, 0.7, 0.5, 0.8, 0.4, 0.9], dtype=np.float32))
    # class 0: 6 (0.9), 2 (0.7), then 0 and 3 tie at 0.5 -> 0; class 1: both; class 2: its one.
    assert top_k_per_class(scores, 3, 4).tolist() == [0, 1, 2, 4, 5, 6]
    assert top_k_per_class(scores, 1, 4).tolist() == [1, 5, 6]
    assert top_k_per_class(scores, None, 4).tolist() == list(range(7))
    with pytest.raises(ValueError, match="at least 1"):
        top_k_per_class(scores, 0, 4)


def test_top_k_round_trip_keeps_exactly_the_most_confident_images_with_their_predictions(files):
    model_dir, aux_path, aux, tmp = files
    k = 15
    result = pseudo_label(model_dir, aux_path, tmp / "pseudo.beton", top_k=k, batch_size=256, device="cpu")
    pred, conf = reference_scores(model_dir, aux.images)
    counts = np.bincount(pred, minlength=CLASSES)
    # Classes above and below K, or the test would not check the cut and the short-class report.
    assert (counts > k).sum() >= 2 and ((counts < k) & (counts > 0)).any(), counts
    expected = reference_top_k(pred, conf, k)

    out = read_beton(tmp / "pseudo.beton")
    np.testing.assert_array_equal(out.images, aux.images[expected])
    np.testing.assert_array_equal(out.labels, pred[expected])
    assert out.class_names == NAMES
    kept = np.bincount(pred[expected], minlength=CLASSES).tolist()
    assert result.kept_per_class == kept and result.scored == N_AUX
    assert result.short_classes == [NAMES[c] for c in range(CLASSES) if counts[c] < k]

    manifest = read_manifest(tmp / "pseudo.beton")
    assert manifest["class_counts"] == kept and manifest["num_classes"] == CLASSES
    assert manifest["format"] == "pseudo-label"
    assert manifest["source_sha256"] == read_manifest(aux_path)["content_sha256"]
    record = manifest["meta"]["pseudo_label"]
    weights = model_dir / "model.safetensors"
    assert record["model"] == str(weights.resolve())
    assert record["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["source_beton"] == str(aux_path.resolve())
    assert record["source_bytes"] == aux_path.stat().st_size
    assert record["top_k_per_class"] == k and record["kept_per_class"] == kept and record["scored"] == N_AUX
    for c in range(CLASSES):
        mine = conf[expected][pred[expected] == c]
        assert record["min_confidence_per_class"][c] == (None if not len(mine) else pytest.approx(mine.min(), abs=1e-5))


def test_all_keeps_every_image_in_order_labelled_with_its_prediction(files):
    model_dir, aux_path, aux, tmp = files
    # Small batches: the scoring pass runs over many chunks.
    pseudo_label(model_dir, aux_path, tmp / "all.beton", top_k=None, batch_size=7, device="cpu")
    pred, _ = reference_scores(model_dir, aux.images)
    out = read_beton(tmp / "all.beton")
    np.testing.assert_array_equal(out.images, aux.images)
    np.testing.assert_array_equal(out.labels, pred)
    assert read_manifest(tmp / "all.beton")["meta"]["pseudo_label"]["top_k_per_class"] is None


def test_iter_beton_streams_the_file_or_a_subset_in_chunks(files):
    _, aux_path, aux, _ = files
    chunks = list(iter_beton(aux_path, rows=50))
    assert [len(c) for c in chunks] == [50, 50, 20]
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), aux.images)
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), aux.labels)
    index = np.array([0, 3, 4, 5, 60, 119])
    picked = list(iter_beton(aux_path, rows=4, index=index))
    np.testing.assert_array_equal(np.concatenate([c.images for c in picked]), aux.images[index])
    with pytest.raises(IndexError, match="aux.beton"):
        next(iter_beton(aux_path, index=np.array([120])))


def test_errors_name_the_file_and_the_fix_and_leave_nothing_behind(files, tmp_path):
    model_dir, aux_path, _, tmp = files
    out = tmp / "pseudo.beton"
    with pytest.raises(ValueError, match="at least 1"):
        pseudo_label(model_dir, aux_path, out, top_k=0, device="cpu")
    with pytest.raises(ValueError, match=r"100 x 4 classes = 400 images.*holds 120.*at most 30.*--all"):
        pseudo_label(model_dir, aux_path, out, top_k=100, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.beton"):
        pseudo_label(model_dir, tmp / "missing.beton", out, top_k=1, device="cpu")
    with pytest.raises(FileNotFoundError, match="no-model"):
        pseudo_label(tmp / "no-model", aux_path, out, top_k=1, device="cpu")
    write_aux(tmp / "big.beton", n=8, size=32)
    with pytest.raises(ValueError, match=r"trained on 16x16 images, .*big.beton holds 32x32.*--size 16"):
        pseudo_label(model_dir, tmp / "big.beton", out, top_k=1, device="cpu")
    with pytest.raises(FileExistsError, match="is an input of this command"):
        pseudo_label(model_dir, aux_path, aux_path, top_k=1, device="cpu", overwrite=True)
    assert not out.exists()

    out.write_bytes(b"a file pseudo-label did not write")
    with pytest.raises(FileExistsError, match="did not write"):
        pseudo_label(model_dir, aux_path, out, top_k=1, device="cpu", overwrite=True)
    assert out.read_bytes() == b"a file pseudo-label did not write"
    out.unlink()
    pseudo_label(model_dir, aux_path, out, top_k=1, device="cpu")
    earlier = out.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        pseudo_label(model_dir, aux_path, out, top_k=1, device="cpu")
    assert out.read_bytes() == earlier

    def interrupt(phase, done, total):
        if phase == "write":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pseudo_label(model_dir, aux_path, out, top_k=5, device="cpu", overwrite=True, progress=interrupt)
    assert out.read_bytes() == earlier  # the earlier file stands; no temporary is left
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == [".pseudo.beton.biamat.json"]
    pseudo_label(model_dir, aux_path, out, top_k=5, device="cpu", overwrite=True)
    assert len(read_beton(out)) == sum(read_manifest(out)["class_counts"])


def invoke(*args):
    return runner.invoke(app, ["pseudo-label", *map(str, args)])


def test_cli_success_user_error_and_usage_errors(files):
    model_dir, aux_path, _, tmp = files
    done = invoke(model_dir, aux_path, tmp / "p.beton", "--top-k-per-class", 5, "--device", "cpu", "--batch-size", 32)
    assert done.exit_code == 0, done.output
    assert f"wrote {tmp / 'p.beton'}" in " ".join(done.stdout.split()) and (tmp / "p.beton.json").exists()
    assert json.loads((tmp / "p.beton.json").read_text())["meta"]["pseudo_label"]["top_k_per_class"] == 5

    again = invoke(model_dir, aux_path, tmp / "p.beton", "--all", "--device", "cpu")
    assert again.exit_code == 1 and "error:" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.output
    missing = invoke(tmp / "nothing", aux_path, tmp / "q.beton", "--all", "--device", "cpu")
    assert missing.exit_code == 1 and "nothing" in missing.stderr

    for bad in ([], ["--all", "--top-k-per-class", 3], ["--top-k-per-class", 0]):
        usage = invoke(model_dir, aux_path, tmp / "q.beton", *bad)
        assert usage.exit_code == 2, (bad, usage.output)
    assert invoke(model_dir, aux_path, tmp / "q.npz", "--all").exit_code == 2
    assert not (tmp / "q.beton").exists()


# ---- training on the pseudo-labelled data (method.aux_mode = pseudo) ---------------------------------


def test_a_pseudo_mode_run_trains_on_what_pseudo_label_wrote(tmp_path, tiny_train_config):
    from engine.trainer import train

    # The pipeline of Table 3: a classifier of the primary classes labels the auxiliary shapes.
    primary = make_shapes("primary", "test", n=8, size=SIZE)
    model_dir = write_model(tmp_path / "labeller", len(primary.class_names), primary.class_names)
    write_beton(tmp_path / "aux.beton", make_shapes("aux", "train", n=96, size=SIZE))
    pseudo = tmp_path / "pseudo.beton"
    pseudo_label(model_dir, tmp_path / "aux.beton", pseudo, top_k=None, device="cpu")

    cfg = tiny_train_config(f"data.aux={pseudo}", "method.aux_mode=pseudo", "optim.epochs=1")
    assert cfg.method.warmup_epochs == 1
    records = train(cfg, tmp_path / "run")
    assert len(records) == 1 and np.isfinite(records[0]["loss"])
    r = records[0]
    assert r["images"] == 2 * (32 + 32)  # every step: half primary, half pseudo-labelled
    assert r["loss_low"] == 0.0 and r["loss_high"] == 0.0 and r["omega"] is None and r["n_high_ratio"] is None
    assert "warmup_epochs = 0" in (tmp_path / "run" / "config.toml").read_text()
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["aux_mode"] == "pseudo" and card["aux_classes"] == [] and card["aux_data"] == [read_manifest(pseudo)["name"]]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any(k.startswith("aux_fc.") for k in state["model"])  # no auxiliary head was built
    assert load(tmp_path / "run").num_classes == len(primary.class_names)


def test_pseudo_mode_refuses_auxiliary_data_without_the_primary_classes(tmp_path, tiny_train_config):
    from engine.trainer import Trainer

    spec = "shapes:aux?n=64&size=16"  # 10 related + 10 unrelated classes, not the primary's 10
    cfg = tiny_train_config(f"data.aux={spec}", "method.aux_mode=pseudo")
    with pytest.raises(ConfigError, match=r"'shapes:aux\?n=64&size=16' has 20 classes and the primary data "
                                          r"'shapes:primary\?n=64&size=16' has 10.*pseudo-label"):
        Trainer(cfg, tmp_path / "run")


@pytest.mark.gpu
def test_scoring_on_the_gpu_keeps_what_the_cpu_keeps(files, monkeypatch):
    # TF32 convolutions (cuDNN's default) round the logits at 1e-3; off, the two devices differ
    # in the last bits only, far below the margins of these images.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model_dir, aux_path, _, tmp = files
    for name, top_k in (("all", None), ("top", 15)):
        pseudo_label(model_dir, aux_path, tmp / f"cpu-{name}.beton", top_k=top_k, batch_size=32, device="cpu")
        pseudo_label(model_dir, aux_path, tmp / f"gpu-{name}.beton", top_k=top_k, batch_size=32, device="cuda")
        cpu, gpu = read_beton(tmp / f"cpu-{name}.beton"), read_beton(tmp / f"gpu-{name}.beton")
        np.testing.assert_array_equal(gpu.images, cpu.images)
        np.testing.assert_array_equal(gpu.labels, cpu.labels)
