"""Robust datasets (Ilyas et al. 2019; the paper's Appendix C): the feature-matching descent against
a hand-written loop, the chunked, resumable writer, and `biamat-engine robustify`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli.app import app
from engine.feature_matching import match_features
from engine.models import build, model_card, primary_state_dict
from engine.robustify import Parts, draw_starts, parts_dir, robustify
from loaders.beton import read_beton, read_manifest, write_beton
from loaders.images import pixel_images, to_device_images
from loaders.sources.base import sha256_files
from loaders.types import ArrayDataset

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE, CLASSES, N = 8, 4, 10


def tiny_model(num_classes: int = CLASSES, seed: int = 0):
    torch.manual_seed(seed)
    model = build("wrn-10-1", num_classes)
    for m in model.modules():  # non-trivial running statistics: eval mode must use them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture()
def model_file(tmp_path):
    model = tiny_model()
    path = tmp_path / "run" / "model.safetensors"
    path.parent.mkdir()
    save_file(primary_state_dict(model), str(path))
    card = model_card(model, "wrn-10-1", [f"c{i}" for i in range(CLASSES)], image_size=SIZE)
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def write_data(path, n: int = N, size: int = SIZE, classes: int = CLASSES, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    write_beton(path, ArrayDataset(images, labels, [f"c{i}" for i in range(classes)], "tiny"), format="arrays")
    return path


@pytest.fixture()
def data_file(tmp_path):
    return write_data(tmp_path / "train.beton")


def unit(shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ---- the descent -------------------------------------------------------------------------------

def test_descent_reduces_the_feature_distance_and_stays_in_unit_range():
    model = tiny_model()
    start, target = unit((5, 3, SIZE, SIZE), 1), unit((5, 3, SIZE, SIZE), 2)
    matched = match_features(model, start, target, steps=8, step_size=0.5)
    assert (matched.distance < matched.start_distance).all()
    assert matched.images.min() >= 0 and matched.images.max() <= 1
    with torch.no_grad():
        again = (model.features(matched.images) - model.features(target)).norm(dim=1)
    torch.testing.assert_close(again, matched.distance)


def hand_written_descent(model, start, target, steps, step_size):
    """The method as Ilyas et al. describe it, one sample at a time where it branches."""
    model.eval()
    goal = model.features(target).detach()
    x = start.clone()
    best, best_d = start.clone(), [float("inf")] * len(x)
    for _ in range(steps + 1):
        x.requires_grad_(True)
        d = torch.sqrt(((model.features(x) - goal) ** 2).sum(dim=1))
        grad = torch.autograd.grad(d.sum(), x)[0]
        for i in range(len(x)):
            if d[i].item() < best_d[i]:
                best[i], best_d[i] = x[i].detach(), d[i].item()
        norm = grad.reshape(len(x), -1).norm(dim=1).reshape(-1, 1, 1, 1)
        x = torch.clamp(x.detach() - step_size * grad / norm, 0, 1)
    return best, torch.tensor(best_d)


def test_descent_agrees_with_a_hand_written_loop_and_leaves_the_model_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start, target = unit((4, 3, SIZE, SIZE), 3), unit((4, 3, SIZE, SIZE), 4)
    matched = match_features(model, start, target, steps=5, step_size=0.3)
    # The loop takes one more gradient than it needs (its last step is discarded): steps + 1
    # distances, the same ones match_features measures.
    best, best_d = hand_written_descent(model, start, target, steps=5, step_size=0.3)
    torch.testing.assert_close(matched.images, best, atol=1e-6, rtol=0)
    torch.testing.assert_close(matched.distance, best_d, atol=1e-5, rtol=1e-5)
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_descent_rejects_images_outside_unit_range_and_no_steps():
    model = tiny_model()
    x = unit((2, 3, SIZE, SIZE), 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        match_features(model, x * 255, x, steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="steps"):
        match_features(model, x, x, steps=0, step_size=0.1)


def test_starts_are_other_images_drawn_from_the_seed():
    starts = draw_starts(7, 500, seed=3)
    assert (starts != np.arange(500) % 7).all() and starts.min() >= 0 and starts.max() < 7
    assert set(starts.tolist()) == set(range(7))
    assert np.array_equal(starts, draw_starts(7, 500, seed=3))
    assert not np.array_equal(starts, draw_starts(7, 500, seed=4))
    with pytest.raises(ValueError, match="at least 2"):
        draw_starts(1, 1, seed=0)


# ---- the dataset -------------------------------------------------------------------------------

SETTINGS = dict(steps=3, step_size=0.5, batch_size=2, chunk_size=4, seed=5, device="cpu")


def test_robust_dataset_round_trips_with_data_labels_and_the_optimised_images(tmp_path, model_file, data_file):
    out = tmp_path / "robust.beton"
    manifest = robustify(model_file, data_file, out, **SETTINGS)
    robust, data = read_beton(out), read_beton(data_file)
    assert len(robust) == N and np.array_equal(robust.labels, data.labels)
    assert robust.class_names == data.class_names and manifest["format"] == "robustify"
    assert not parts_dir(out).exists()
    facts = manifest["meta"]["robustify"]
    assert facts["model_sha256"] == sha256_files([model_file])
    assert facts["data_sha256"] == read_manifest(data_file)["content_sha256"]
    assert (facts["steps"], facts["step_size"], facts["seed"]) == (3, 0.5, 5)
    assert facts["mean_final_distance"] < facts["mean_start_distance"]
    # Image 6 is the start image the seed drew, optimised alone (batch and chunk do not matter).
    i, j = 6, draw_starts(N, N, seed=5)[6]
    model = tiny_model()
    alone = match_features(model, to_device_images(data.images[[j]], "cpu"),
                           to_device_images(data.images[[i]], "cpu"), steps=3, step_size=0.5)
    assert np.abs(pixel_images(alone.images)[0].astype(int) - robust.images[i]).max() <= 1  # float rounding


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, model_file, data_file):
    whole = tmp_path / "whole.beton"
    robustify(model_file, data_file, whole, **SETTINGS)

    out = tmp_path / "resumed.beton"

    def interrupt(done, total):
        if done > 4:  # inside the second chunk: the first is saved, the second lost
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        robustify(model_file, data_file, out, **SETTINGS, progress=interrupt)
    assert not out.exists()
    parts = Parts(out)
    assert sorted(p.name for p in parts.root.iterdir()) == ["chunk-000000.npz", "plan.json"]

    seen = []
    manifest = robustify(model_file, data_file, out, **{**SETTINGS, "batch_size": 3},
                         progress=lambda done, total: seen.append(done))
    assert seen[0] == 4 and seen[-1] == N  # the saved chunk counted first, not computed again
    assert np.array_equal(read_beton(out).images, read_beton(whole).images)
    assert manifest["content_sha256"] == read_manifest(whole)["content_sha256"]
    assert not parts.root.exists()


def test_resuming_with_other_arguments_names_them(tmp_path, model_file, data_file):
    out = tmp_path / "robust.beton"

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        robustify(model_file, data_file, out, **SETTINGS, progress=interrupt)
    with pytest.raises(ValueError, match=r"--steps: 3 then, 4 now; --seed: 5 then, 6 now.*delete .*robust.beton.parts"):
        robustify(model_file, data_file, out, **{**SETTINGS, "steps": 4, "seed": 6})


def test_bad_requests_are_refused_before_any_work(tmp_path, model_file, data_file):
    out = tmp_path / "robust.beton"
    with pytest.raises(ValueError, match="steps must be >= 1"):
        robustify(model_file, data_file, out, **{**SETTINGS, "steps": 0})
    with pytest.raises(FileNotFoundError, match="missing.beton"):
        robustify(model_file, tmp_path / "missing.beton", out, **SETTINGS)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        robustify(tmp_path / "nope.safetensors", data_file, out, **SETTINGS)
    ten = write_data(tmp_path / "ten.beton", classes=10)
    with pytest.raises(ValueError, match=r"classifies 4 classes, .*ten.beton has 10 \(labels up to 9\)"):
        robustify(model_file, ten, out, **SETTINGS)
    big = write_data(tmp_path / "big.beton", size=16)
    with pytest.raises(ValueError, match=r"trained on 8x8 images, .*big.beton holds 16x16"):
        robustify(model_file, big, out, **SETTINGS)
    assert not out.exists() and not parts_dir(out).exists()
    out.write_bytes(b"a file robustify did not write")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="did not write"):
            robustify(model_file, data_file, out, **SETTINGS, overwrite=overwrite)
    assert out.read_bytes() == b"a file robustify did not write"
    out.unlink()
    robustify(model_file, data_file, out, **SETTINGS, limit=2)
    with pytest.raises(FileExistsError, match="--overwrite"):
        robustify(model_file, data_file, out, **SETTINGS)
    robustify(model_file, data_file, out, **SETTINGS, overwrite=True, limit=3)
    assert len(read_beton(out)) == 3


# ---- the command -------------------------------------------------------------------------------

def test_cli_writes_the_dataset_and_reports_errors(tmp_path, model_file, data_file):
    runner = CliRunner()
    out = tmp_path / "robust.beton"
    args = ["robustify", str(model_file.parent), str(data_file), str(out), "--steps", "2", "--chunk-size", "4",
            "--device", "cpu", "--limit", "6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and len(read_beton(out)) == 6

    again = runner.invoke(app, args)  # OUT exists: a user error, exit 1
    assert again.exit_code == 1 and "--overwrite" in again.output

    for bad in (["--steps", "0"], ["--step-size", "0"]):  # usage errors, exit 2
        usage = runner.invoke(app, args[:4] + bad)
        assert usage.exit_code == 2, usage.output
    not_beton = runner.invoke(app, args[:3] + [str(tmp_path / "robust.npz")])
    assert not_beton.exit_code == 2 and ".beton" in not_beton.output


@pytest.mark.gpu
def test_cuda_run_matches_the_cpu_run(tmp_path, model_file, data_file):
    # cuDNN may use TF32 and other algorithms, so the numbers agree closely rather than bit for bit.
    cpu = robustify(model_file, data_file, tmp_path / "cpu.beton", **SETTINGS)["meta"]["robustify"]
    cuda = robustify(model_file, data_file, tmp_path / "cuda.beton", **{**SETTINGS, "device": "cuda"})
    facts = cuda["meta"]["robustify"]
    assert facts["device"].startswith("cuda")
    assert facts["mean_final_distance"] < facts["mean_start_distance"]
    for key in ("mean_start_distance", "mean_final_distance"):
        assert facts[key] == pytest.approx(cpu[key], rel=2e-2)
    gap = np.abs(read_beton(tmp_path / "cuda.beton").images.astype(int) - read_beton(tmp_path / "cpu.beton").images)
    assert np.mean(gap <= 2) > 0.99
