"""Damaged, crafted and mismatched inputs driven through the CLI (docs/reliability.md): each ends
in exit 1 (or 2 for a usage error) with one `error:` line naming the file or key, no traceback,
every file that was there before byte-identical and no partial output."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli.app import app
from engine.checkpoint import save_checkpoint
from engine.models import build, model_card, primary_state_dict
from loaders.beton import HEADER, FIELD_DESC, FIELDS, SAMPLE_META, write_beton
from loaders.sources.shapes import make_shapes

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
SIZE = 16


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(result, *names: str, code: int = 1) -> None:
    """Exit `code`, exactly one `error:` line naming every one of `names`, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    if code == 1:
        lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(lines) == 1, result.stderr
        for name in names:
            assert name in lines[0], (name, lines[0])
    else:
        for name in names:
            assert name in result.output, (name, result.output)


# -- a tiny model and test set: each case copies the folder and damages one file ----------------

@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = build("wrn-10-1", 10).eval()
    card = model_card(model, "wrn-10-1", image_size=SIZE)
    save_file(primary_state_dict(model), str(root / "model.safetensors"))
    (root / "model.json").write_text(json.dumps(card))
    save_checkpoint(root / "last.pt", {"model": model.state_dict(), "model_card": card})
    images = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(root / "test.npz", images=images, labels=np.arange(6) % 10, class_names=[str(i) for i in range(10)])
    write_beton(root / "test.beton", make_shapes("primary", "test", n=6, size=SIZE), format="shapes")
    return root


@pytest.fixture
def case(good, tmp_path) -> Path:
    for name, data in snapshot(good).items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def eval_refused(folder: Path, model: str, test: str, *names: str):
    before = snapshot(folder)
    result = invoke("eval", folder / model, "--test", folder / test, "--attacks", "clean", "--device", "cpu",
                    "--out", folder / "report.json")
    assert_refused(result, *names)
    assert snapshot(folder) == before  # no report, nothing replaced
    return result


def test_the_untouched_files_evaluate(case):
    # The baseline every refusal below departs from by one damaged file.
    for model in ("model.safetensors", "last.pt"):
        for test in ("test.npz", "test.beton"):
            result = invoke("eval", case / model, "--test", case / test, "--attacks", "clean", "--device", "cpu",
                            "--out", case / "report.json")
            assert result.exit_code == 0, result.output
            (case / "report.json").unlink()


# -- Part 3: model files -----------------------------------------------------------------------

def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _with_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:5]), "too short for a safetensors file"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2**62) + p.read_bytes()[8:]), "safetensors header claims"),
    (lambda p: p.write_bytes(struct.pack("<Q", 8) + b"\xff\xfe{[}]\x00\x01" + p.read_bytes()[16:]),
     "header is not JSON"),
])
def test_a_damaged_safetensors_file_is_named_before_it_is_read(case, damage, message):
    damage(case / "model.safetensors")
    eval_refused(case, "model.safetensors", "test.npz", str(case / "model.safetensors"), message)


def test_a_safetensors_tensor_of_another_shape_is_refused_before_loading(case):
    header, data = _header(case / "model.safetensors")
    header["fc.weight"]["shape"] = [5, header["fc.weight"]["shape"][1] * 2]  # same bytes, other shape
    _with_header(case / "model.safetensors", header, data)
    eval_refused(case, "model.safetensors", "test.npz", "fc.weight is [5, 128] in the file, [10, 64] in the model")


@pytest.mark.parametrize("edit, names", [
    (lambda c: {**c, "architecture": "wrn-16-1"}, ["does not hold the weights", "model.json"]),
    (lambda c: {**c, "num_classes": 10**10}, ["'num_classes'", "10000000000"]),
    (lambda c: {**c, "num_classes": "10"}, ["'num_classes'"]),
    (lambda c: {**c, "architecture": "wrn-10-100000"}, ["parameters"]),
    (lambda c: {**c, "std": [0.2, 0.2, 0.0]}, ["'std'"]),
    (lambda c: {**c, "mean": [0.5, 0.5, 0.5, 0.5]}, ["'mean'"]),
    (lambda c: {**c, "image_size": 0}, ["'image_size'"]),
    (lambda c: [c], ["not a biamat-engine model card", "list"]),
    (lambda c: {**c, "class_names": "airplane"}, ["'class_names'"]),
])
def test_a_bad_model_card_is_refused_before_anything_is_allocated(case, edit, names):
    card = json.loads((case / "model.json").read_text())
    (case / "model.json").write_text(json.dumps(edit(card)))
    eval_refused(case, "model.safetensors", "test.npz", "model.json", *names)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_runs_nothing_and_advises_nothing_unsafe(case):
    marker = case / "ran"
    (case / "last.pt").write_bytes(pickle.dumps({"model": _RunsACommand(marker)}, protocol=2))
    eval_refused(case, "last.pt", "test.npz", str(case / "last.pt"), "not a readable checkpoint")
    assert not marker.exists()
    result = invoke("eval", case / "last.pt", "--test", case / "test.npz", "--device", "cpu")
    assert "weights_only" not in result.output and "False" not in result.output


def test_an_empty_checkpoint_says_more_than_aborted(case):
    (case / "last.pt").write_bytes(b"")
    result = eval_refused(case, "last.pt", "test.npz", str(case / "last.pt"), "empty (0 bytes)")
    assert "Aborted" not in result.output


@pytest.mark.parametrize("state, names", [
    ({"model": [1, 2], "model_card": None}, ["not a biamat-engine model card"]),
    ({"model": [1, 2]}, ["no model_card/model"]),
    ("MODEL_AS_LIST", ["'model' entry"]),
    ("ANOTHER_CLASS_COUNT", ["fc.weight"]),
])
def test_a_checkpoint_of_the_wrong_shape_is_named(case, state, names):
    good = torch.load(case / "last.pt", weights_only=True)
    if state == "MODEL_AS_LIST":
        state = {**good, "model": list(good["model"].values())}
    elif state == "ANOTHER_CLASS_COUNT":
        state = {**good, "model_card": {**good["model_card"], "num_classes": 5, "class_names": []}}
    save_checkpoint(case / "last.pt", state)
    eval_refused(case, "last.pt", "test.npz", str(case / "last.pt"), *names)


# -- Part 4: wrong data for the model ----------------------------------------------------------

def test_eval_refuses_images_of_another_size_than_the_card(case):
    images = np.zeros((4, 24, 24, 3), np.uint8)
    np.savez(case / "test.npz", images=images, labels=np.arange(4), class_names=[str(i) for i in range(10)])
    eval_refused(case, "model.safetensors", "test.npz", "16x16", "24x24", "--size 16")


def test_eval_refuses_a_model_with_non_finite_weights(case):
    model = build("wrn-10-1", 10)
    state = primary_state_dict(model)
    state["block1.layer.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(case / "model.safetensors"))
    eval_refused(case, "model.safetensors", "test.npz", "block1.layer.0.conv1.weight", "NaN or inf")


def _npz(case: Path, **arrays) -> None:
    base = {"images": np.zeros((4, SIZE, SIZE, 3), np.uint8), "labels": np.arange(4),
            "class_names": np.array([str(i) for i in range(10)])}
    np.savez(case / "test.npz", **{**base, **arrays})


@pytest.mark.parametrize("make, names", [
    (lambda c: _npz(c, labels=np.arange(4) + 0.5), ["labels are float64", "integers"]),
    (lambda c: _npz(c, images=np.zeros((4, SIZE, SIZE + 2, 3), np.uint8)), ["16x18", "square"]),
    (lambda c: _npz(c, class_names=np.array("airplane")), ["class_names", "list of names"]),
    (lambda c: _npz(c, images=np.zeros((4, SIZE, SIZE, 1), np.uint8)), ["(N, H, W, 3)"]),
    (lambda c: (c / "test.npz").write_bytes((c / "test.npz").read_bytes()[:300]), ["not a readable .npz"]),
    (lambda c: np.save(c / "x.npy", np.array([object()], dtype=object), allow_pickle=True)
     or os.replace(c / "x.npy", c / "test.npz"), ["not a readable .npz"]),
])
def test_a_bad_npz_test_set_is_named(case, make, names):
    make(case)
    eval_refused(case, "model.safetensors", "test.npz", "test.npz", *names)
    result = invoke("eval", case / "model.safetensors", "--test", case / "test.npz", "--device", "cpu")
    assert "allow_pickle" not in result.output


# -- Part 3/4: .beton files and their manifests --------------------------------------------------

def _edit_manifest(case: Path, edit) -> None:
    path = case / "test.beton.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize("edit, key", [
    (lambda m: {k: v for k, v in m.items() if k != "count"}, "'count'"),
    (lambda m: {k: v for k, v in m.items() if k != "class_names"}, "'class_names'"),
    (lambda m: {**m, "class_names": "airplane"}, "'class_names'"),
    (lambda m: {**m, "count": "6"}, "'count'"),
    (lambda m: {**m, "channel_std": [0.2, 0.2, 0.2, 0.2]}, "'channel_std'"),
])
def test_a_bad_manifest_is_named_with_its_key(case, edit, key):
    _edit_manifest(case, edit)
    eval_refused(case, "model.safetensors", "test.beton", "test.beton.json", key)


def _header_bytes() -> int:
    return HEADER.itemsize + len(FIELDS) * FIELD_DESC.itemsize


def _patch_header(case: Path, field: str, value: int) -> None:
    header = np.fromfile(case / "test.beton", dtype=HEADER, count=1)
    header[0][field] = value
    with (case / "test.beton").open("r+b") as f:
        f.write(header.tobytes())


def _patch_meta(case: Path, field: str, value: int, rows=slice(2, 3)) -> None:
    meta = np.memmap(case / "test.beton", dtype=SAMPLE_META, mode="r+", offset=_header_bytes(), shape=(6,))
    meta["image"][field][rows] = value
    meta.flush()
    del meta


@pytest.mark.parametrize("damage, names", [
    (lambda c: _patch_header(c, "num_samples", 2**64 - 1), ["claims 18,446,744,073,709,551,615 samples"]),
    (lambda c: _patch_header(c, "page_size", 0), ["page size 0"]),
    (lambda c: (_patch_meta(c, "height", 0), _patch_meta(c, "width", 0)), ["square size"]),
    (lambda c: (_patch_meta(c, "height", 0, slice(None)), _patch_meta(c, "width", 0, slice(None))), ["0x0 pixels"]),
    (lambda c: _patch_meta(c, "data_ptr", 8), ["points into the header"]),
    (lambda c: _patch_meta(c, "data_ptr", 2**40), ["past the end"]),
    (lambda c: os.replace(c / "test.npz", c / "test.beton"), ["zip archive (an .npz?)"]),
])
def test_a_damaged_beton_is_refused_when_opened(case, damage, names):
    damage(case)
    eval_refused(case, "model.safetensors", "test.beton", "test.beton", *names)


# -- a tiny trained run: --resume against changed data, and damaged records for analyze --------

def _train_args(root: Path, out: Path) -> list:
    return ["train", "--out", out, "--primary", root / "train.npz", "--test", f"shapes:primary?n=16&size={SIZE}",
            "--model", "wrn-10-1", "--epochs", "1", "--device", "cpu", "--set", "data.batch_size=16",
            "--set", "attack.steps=1", "--set", "eval.n=8", "--set", "eval.steps=1"]


def _train(root: Path) -> Path:
    """`root` with train.npz and run/, one epoch trained on it (config.toml names the data by its
    absolute path, so a run that resumes needs its own)."""
    data = make_shapes("primary", "train", n=32, size=SIZE)
    np.savez(root / "train.npz", images=data.images, labels=data.labels, class_names=np.array(data.class_names))
    result = invoke(*_train_args(root, root / "run"))
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def trained_copy(trained, tmp_path) -> Path:
    """A copy of the trained run for what reads only its records (analyze)."""
    for name, data in snapshot(trained).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_resume_refuses_data_that_changed_under_the_same_path(tmp_path):
    root = _train(tmp_path)
    assert json.loads((root / "run" / "data.json").read_text())["files"]  # recorded at the start
    data = dict(np.load(root / "train.npz"))
    data["images"] = 255 - data["images"]  # same size, same classes, other pixels
    np.savez(root / "train.npz", **data)
    before = snapshot(root / "run")
    result = invoke("train", "--out", root / "run", "--resume", "--set", "optim.epochs=2")
    assert_refused(result, "train.npz", "changed since the run started", "its content")
    assert snapshot(root / "run") == before


def test_a_run_without_a_fingerprint_resumes_as_before(tmp_path, caplog):
    root = _train(tmp_path)
    (root / "run" / "data.json").unlink()
    with caplog.at_level("INFO"):
        result = invoke("train", "--out", root / "run", "--resume", "--set", "optim.epochs=2")
    assert result.exit_code == 0, result.output
    assert "predates data fingerprints" in caplog.text
    assert [r["epoch"] for r in map(json.loads, (root / "run" / "metrics.jsonl").read_text().splitlines())] == [1, 2]


@pytest.mark.parametrize("file, text, names", [
    ("metrics.jsonl", '{"epoch": "one", "lr": 0.1}\n', ["metrics.jsonl", "record 1", "'epoch'"]),
    ("metrics.jsonl", '[1, 2]\n', ["metrics.jsonl", "line 1", "expected an object"]),
    ("selection.jsonl", '{"epoch": 1, "aux": 0, "class_names": ["a"], "seen": "3", "high": [1]}\n',
     ["selection.jsonl", "'seen'"]),
    ("selection.jsonl", '{"epoch": 1, "aux": 0, "class_names": ["a", "b"], "seen": [3], "high": [1]}\n',
     ["selection.jsonl", "differ in length"]),
    ("eval.json", '[0.5]', ["eval.json", "list"]),
    ("eval.json", '{"clean_acc": "high", "attacks": {}}', ["eval.json", "'clean_acc'"]),
    ("eval.json", '\x00\xff binary', ["eval.json", "binary"]),
])
def test_analyze_names_a_wrong_typed_record(trained_copy, file, text, names):
    run = trained_copy / "run"
    (run / file).write_bytes(text.encode("latin-1"))
    before = snapshot(run)
    result = invoke("analyze", run, "--out", trained_copy / "analysis")
    assert_refused(result, *names)
    assert snapshot(run) == before and not (trained_copy / "analysis").exists()


def test_analyze_keeps_runs_whose_names_slug_alike_apart(trained_copy):
    pytest.importorskip("matplotlib")
    os.replace(trained_copy / "run", trained_copy / "x y")
    (trained_copy / "x-y").mkdir()
    for name, data in snapshot(trained_copy / "x y").items():
        (trained_copy / "x-y" / name).parent.mkdir(parents=True, exist_ok=True)
        (trained_copy / "x-y" / name).write_bytes(data)
    result = invoke("analyze", trained_copy / "x y", trained_copy / "x-y", "--out", trained_copy / "analysis")
    assert result.exit_code == 0, result.output
    curves = sorted(p.name for p in (trained_copy / "analysis").glob("curves-x-y*.png"))
    assert curves == ["curves-x-y-2.png", "curves-x-y.png"]


# -- Part 4: other inputs that would be trained on or acted on -----------------------------------

def test_a_tar_member_that_would_stand_in_for_another_is_refused(tmp_path):
    import io
    import tarfile

    from tests.fixtures_formats import write_cifar10

    archive, _ = write_cifar10(tmp_path / "src")
    crafted = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive) as good, tarfile.open(crafted, "w:gz") as tar:
        for member in good.getmembers():
            tar.addfile(member, good.extractfile(member) if member.isfile() else None)
        blob = pickle.dumps({b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 6}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/../data_batch_1")  # would replace the real batch 1
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    result = invoke("prepare", "cifar10", crafted, tmp_path / "c.beton")
    assert_refused(result, str(crafted), "'cifar-10-batches-py/../data_batch_1'", "outside the archive")
    assert not (tmp_path / "c.beton").exists() and not (tmp_path / "c.beton.json").exists()


def test_a_binary_file_as_the_config_is_named(tmp_path):
    # Python's UnicodeDecodeError names a byte, not the file, and would end in a traceback.
    config = tmp_path / "run.toml"
    config.write_bytes(b"\x80\x81\xff[optim]")
    result = invoke("train", "--config", config, "--out", tmp_path / "run", "--device", "cpu")
    assert_refused(result, str(config), "is not valid TOML")
    assert not (tmp_path / "run").exists()


def test_a_binary_file_as_the_manifest_is_named(case):
    (case / "test.beton.json").write_bytes(b"\x80\x81\xff{}")
    eval_refused(case, "model.safetensors", "test.beton", "test.beton.json", "not valid JSON")


def test_a_preset_base_outside_the_presets_folder_is_refused(tmp_path):
    (tmp_path / "evil.toml").write_text('[optim]\nepochs = 1\n')
    config = tmp_path / "run.toml"
    config.write_text(f'base = "../../../../../../../../..{tmp_path / "evil"}"\n')
    result = invoke("train", "--config", config, "--out", tmp_path / "run", "--device", "cpu")
    assert_refused(result, str(config), "is not a preset")
    assert not (tmp_path / "run").exists()


def test_init_heads_without_init_from_is_a_usage_error(tmp_path):
    result = invoke("train", "--init-heads", "new", "--out", tmp_path / "run", "--device", "cpu")
    assert_refused(result, "--init-heads", "--init-from", code=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, names", [
    (["--robust-weight", "nan"], ["--robust-weight", "finite"]),
    (["--lr", "1e308"], ["diverged", "lower --lr"]),
    (["--lr", "inf"], ["lr must be positive and finite"]),
])
def test_theory_refuses_non_finite_settings_and_a_diverging_step(tmp_path, args, names):
    result = invoke("theory", "gaussian", "--samples", "200", "--steps", "5", "--train-aux", "20", *args,
                    "--out", tmp_path / "theory")
    assert_refused(result, *names)
    assert not (tmp_path / "theory").exists()


def test_robustify_refuses_an_infinite_step_size(case):
    before = snapshot(case)
    result = invoke("robustify", case / "model.safetensors", case / "test.beton", case / "r.beton",
                    "--step-size", "inf")
    assert_refused(result, "--step-size", "finite", code=2)
    assert snapshot(case) == before


# -- Part 5: messages that name the thing and the fix --------------------------------------------

def _full_disk(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")  # as a failing write() raises it: no file name


def test_a_full_disk_while_preparing_names_the_beton(tmp_path, monkeypatch):
    import loaders.beton

    monkeypatch.setattr(loaders.beton, "_write_index", _full_disk)
    result = invoke("prepare", "shapes", "primary", tmp_path / "p.beton", "--n", "8", "--size", "8")
    assert_refused(result, str(tmp_path / "p.beton"), "No space left on device", "free some space")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_a_report_names_it(case, monkeypatch):
    import engine.run_dir

    import engine.outputs

    real = engine.run_dir.atomic_write
    # Every module that writes through atomic_write (eval's report goes through engine/outputs.py,
    # which writes the report first, then its record) sees the full disk.
    for module in (engine.run_dir, engine.outputs):
        monkeypatch.setattr(module, "atomic_write", lambda path, write: real(path, _full_disk))
    before = snapshot(case)
    result = invoke("eval", case / "model.safetensors", "--test", case / "test.npz", "--attacks", "clean",
                    "--device", "cpu", "--out", case / "report.json")
    assert_refused(result, str(case / "report.json"), "free some space")
    assert snapshot(case) == before


def _few_class_model(folder: Path, classes: int) -> None:
    torch.manual_seed(0)
    model = build("wrn-10-1", classes).eval()
    save_file(primary_state_dict(model), str(folder / "few.safetensors"))
    (folder / "few.json").write_text(json.dumps(model_card(model, "wrn-10-1", image_size=SIZE)))
    images = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(folder / "few.npz", images=images, labels=np.arange(4) % classes,
             class_names=[str(i) for i in range(classes)])


def test_autoattack_on_a_model_with_fewer_than_10_classes_targets_the_classes_it_has(tmp_path):
    pytest.importorskip("pyautoattack")
    _few_class_model(tmp_path, 5)
    result = invoke("eval", tmp_path / "few.safetensors", "--test", tmp_path / "few.npz", "--attacks", "clean,aa",
                    "--aa-attacks", "apgd-t,fab-t", "--aa-iterations", "2", "--device", "cpu",
                    "--out", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert 0 <= report["attacks"]["aa"]["robust_acc"] <= report["clean_acc"]


def test_autoattack_dlr_on_three_classes_is_refused_with_the_alternative(tmp_path):
    pytest.importorskip("pyautoattack")
    _few_class_model(tmp_path, 3)
    result = invoke("eval", tmp_path / "few.safetensors", "--test", tmp_path / "few.npz", "--attacks", "clean,aa",
                    "--aa-attacks", "apgd-t", "--aa-iterations", "2", "--device", "cpu")
    assert_refused(result, "apgd-t", "at least 4 classes", "--aa-attacks apgd-ce,fab-t,square")


@pytest.mark.parametrize("affinity, quota, local_ranks, expected", [
    (range(4), None, "1", 4),          # a 4-core cpuset on a big host
    (range(16), "200000 100000", "1", 2),  # docker --cpus 2
    (range(16), "max 100000", "4", 4),  # 4 torchrun ranks share the cores
    (range(2), None, "8", 1),          # never 0 workers
])
def test_the_ffcv_default_worker_count_fits_the_cores_this_process_may_use(monkeypatch, tmp_path, affinity,
                                                                           quota, local_ranks, expected):
    import loaders.options

    monkeypatch.setattr(loaders.options.os, "sched_getaffinity", lambda pid: set(affinity), raising=False)
    monkeypatch.setattr(loaders.options.os, "cpu_count", lambda: 128)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
    cpu_max = tmp_path / "cpu.max"
    if quota:
        cpu_max.write_text(quota + "\n")
    real_path = loaders.options.Path
    monkeypatch.setattr(loaders.options, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    assert loaders.options.available_cores() == expected


@pytest.mark.parametrize("args", [
    ["eval", "--n", "0"], ["eval", "--batch-size", "-1"], ["eval", "--steps", "0"], ["eval", "--repeats", "0"],
    ["loader", "--size", "0"], ["step", "--aux-classes", "10000000000"],
])
def test_bench_refuses_integers_out_of_range_before_any_work(args, tmp_path):
    result = invoke("bench", *args, "--out", tmp_path / "bench.json")
    assert_refused(result, "--" + args[1].lstrip("-"), code=2)
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_eval_refuses_a_non_finite_step_size(case, value):
    before = snapshot(case)
    result = invoke("eval", case / "model.safetensors", "--test", case / "test.npz", "--step-size", value,
                    "--device", "cpu", "--out", case / "report.json")
    assert_refused(result, "--step-size", code=2)
    assert snapshot(case) == before


def test_a_full_disk_while_appending_a_record_names_the_file(tmp_path, monkeypatch):
    from engine.run_dir import JsonLines

    class FullDisk:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        write = flush = staticmethod(_full_disk)

    path = tmp_path / "metrics.jsonl"
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: FullDisk())
    with pytest.raises(OSError) as err:
        JsonLines(path).write({"epoch": 1})
    assert err.value.filename == str(path) and err.value.errno == 28


def test_a_robustbench_export_with_a_damaged_card_or_file_is_named(case):
    from engine.export import export_robustbench, load_robustbench_export

    run = case / "run"
    run.mkdir()
    for name in ("model.safetensors", "model.json"):
        (run / name).write_bytes((case / name).read_bytes())
    out = export_robustbench(run, case / "export").out_dir
    assert load_robustbench_export(out) is not None
    card = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**card, "num_classes": 10**10}))
    with pytest.raises(ValueError, match="'num_classes'"):
        load_robustbench_export(out)
    (out / "model.json").write_text(json.dumps(card))
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_robustbench_export(out)


def test_a_truncated_checkpoint_is_named(case):
    (case / "last.pt").write_bytes((case / "last.pt").read_bytes()[:2000])
    eval_refused(case, "last.pt", "test.npz", str(case / "last.pt"), "not a readable checkpoint")


def test_a_card_of_other_shapes_than_the_weights_is_refused_before_the_model_is_allocated(case, monkeypatch):
    import engine.models

    real, built = engine.models.build, []

    def recording_build(*args, **kwargs):
        model = real(*args, **kwargs)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(engine.models, "build", recording_build)
    card = json.loads((case / "model.json").read_text())
    (case / "model.json").write_text(json.dumps({**card, "num_classes": 500_000, "class_names": []}))
    eval_refused(case, "model.safetensors", "test.npz", "fc.weight")
    assert built == ["meta"]  # sized and compared on the meta device only: nothing allocated
