"""The trainer on a seconds-long CPU run: the run directory's contract, exact resume, the NaN
stop that keeps the last good checkpoint, clear errors for bad settings, the LR schedule."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.config import ConfigError, OptimConfig, RuntimeConfig, TrainConfig, load_config
from engine.methods import METHODS
from engine.models import build, load
from engine.runtime import resolve_runtime
from engine.schedule import learning_rate
from engine.trainer import NonFiniteLossError, Trainer, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CONTRACT_FIELDS = {"epoch", "step", "lr", "loss", "loss_pri", "loss_low", "loss_high", "omega", "n_high_ratio",
                   "clean_acc", "robust_acc", "images_per_s", "seconds"}
TIMING_FIELDS = {"images_per_s", "seconds", "eval_seconds"}
# Absolute milestone at epoch 2, so a 2-epoch run resumed to 3 has the same schedule as a 3-epoch run.
RUN = ("optim.milestones=2",)
STEPS_PER_EPOCH = 2  # 64 primary images in batches of 32


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_train_config) -> tuple[TrainConfig, Path, list[dict]]:
    """One uninterrupted 3-epoch AT+BiaMAT run (1 warm-up epoch), shared by the read-only tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_train_config(*RUN)
        out = tmp_path_factory.mktemp("run")
        records = train(cfg, out)
    finally:
        torch.set_num_threads(threads)
    return cfg, out, records


def test_run_directory_has_the_contracted_files(finished_run):
    _, out, records = finished_run
    for name in ("config.toml", "metrics.jsonl", "selection.jsonl", "last.pt", "best.pt",
                 "model.safetensors", "model.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp")), "a temporary file of an atomic write was left behind"
    assert read_jsonl(out / "metrics.jsonl") == records


def test_run_files_honour_the_umask(finished_run):
    _, out, _ = finished_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.toml", "last.pt", "model.safetensors", "model.json", "metrics.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_metrics_records_hold_the_contracted_fields(finished_run):
    cfg, _, records = finished_run
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert CONTRACT_FIELDS <= set(r), CONTRACT_FIELDS - set(r)
        assert r["step"] == STEPS_PER_EPOCH * r["epoch"]
        assert r["lr"] == learning_rate(cfg.optim, r["step"], STEPS_PER_EPOCH)
        assert 0.0 <= r["clean_acc"] <= 1.0 and 0.0 <= r["robust_acc"] <= 1.0
        assert r["images_per_s"] > 0 and r["seconds"] > 0
        assert r["loss"] == pytest.approx(r["loss_pri"] + (0 if r["epoch"] == 1 else 1.0) * (
            r["loss_low"] + r["loss_high"]), rel=1e-5)
    warmup, *after = records
    assert warmup["omega"] is None and warmup["n_high_ratio"] is None
    assert warmup["loss"] == warmup["loss_pri"] and warmup["loss_high"] > 0  # attacked, weight 0
    assert after[0]["omega"] is not None and after[0]["omega"] > 0
    assert after[1]["omega"] == after[0]["omega"]  # frozen after warm-up
    assert all(0.0 <= r["n_high_ratio"] <= 1.0 for r in after)
    assert [r["lr"] for r in records] == [0.1, 0.1, pytest.approx(0.01)]


def test_selection_log_counts_every_routed_auxiliary_sample(finished_run):
    _, out, records = finished_run
    lines = read_jsonl(out / "selection.jsonl")
    assert [line["epoch"] for line in lines] == [2, 3]  # nothing is routed during warm-up
    for line, record in zip(lines, records[1:]):
        assert line["aux"] == 0
        assert len(line["seen"]) == len(line["high"]) == len(line["class_names"]) == 20
        assert len(line["related"]) == 20 and sum(line["related"]) == 10
        assert sum(line["seen"]) == STEPS_PER_EPOCH * 32
        assert all(0 <= h <= s for h, s in zip(line["high"], line["seen"]))
        assert sum(line["high"]) / sum(line["seen"]) == pytest.approx(record["n_high_ratio"])


def test_config_toml_is_the_resolved_config(finished_run):
    cfg, out, _ = finished_run
    written = TrainConfig.from_dict(tomllib.loads((out / "config.toml").read_text()))
    assert (written.runtime.device, written.runtime.precision, written.runtime.compile) == ("cpu", "fp32", "off")
    # What ran: the configured implementation, or what `auto` amounts to on this CPU.
    from kernels.dispatch import auto_for_device

    ran = auto_for_device(torch.device("cpu")) if cfg.runtime.kernels == "auto" else cfg.runtime.kernels
    assert written.runtime.kernels == ran
    assert written.data == cfg.data and written.method == cfg.method and written.optim == cfg.optim


def test_checkpoints_load_with_weights_only_and_hold_the_training_state(finished_run):
    cfg, out, records = finished_run
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    for ckpt in (last, best):
        assert not [k for k in ckpt["model"] if "_orig_mod." in k]
        assert {"model", "optimizer", "scaler", "method", "stream", "rng_ranks", "world_size", "epoch", "step",
                "config", "run_record", "format_version", "model_card"} <= set(ckpt)
    assert (last["epoch"], last["step"]) == (3, 6)
    assert last["method"]["omega"] == records[-1]["omega"]
    robust = [r["robust_acc"] for r in records]
    assert best["epoch"] == robust.index(max(robust)) + 1  # the first epoch with the best robust accuracy
    assert best["best_robust"] == max(robust)
    assert last["config"]["optim"] == cfg.to_dict()["optim"]


def test_exported_model_is_the_best_checkpoints_primary_classifier(finished_run):
    _, out, records = finished_run
    best = torch.load(out / "best.pt", weights_only=True)
    exported = load(out)
    assert not exported.training and len(exported.aux_fc) == 0
    reference = build("wrn-10-1", 10, best["model_card"]["aux_classes"])
    reference.load_state_dict(best["model"])
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(exported(x), reference.eval()(x))
    card = json.loads((out / "model.json").read_text())
    assert card["robust_acc"] == max(r["robust_acc"] for r in records)
    assert card["threat_model"] == "Linf" and card["num_classes"] == 10


def test_the_run_normalises_with_its_primary_datas_statistics_and_says_so(finished_run, tmp_path):
    from engine.export import export_robustbench
    from loaders.datasets import open_dataset

    cfg, out, _ = finished_run
    mean, std = open_dataset(cfg.data.primary, "train").info.channel_stats  # the shapes, not CIFAR-10
    card = json.loads((out / "model.json").read_text())
    assert (card["mean"], card["std"]) == (pytest.approx(mean), pytest.approx(std))
    assert "shapes-primary" in card["normalization_source"]
    model = load(out)
    assert model.mu.flatten().tolist() == pytest.approx(mean) and model.sigma.flatten().tolist() == pytest.approx(std)
    exported = json.loads(export_robustbench(out, tmp_path / "rb").card.read_text())["normalization"]
    assert (exported["mean"], exported["std"]) == (pytest.approx(mean), pytest.approx(std))
    assert exported["source"] == card["normalization_source"]


def test_a_resumed_run_keeps_the_normalisation_it_was_trained_with(tmp_path, tiny_train_config, caplog):
    from engine.models.wideresnet import CIFAR10_MEAN

    run = ("method.warmup_epochs=0", "eval.steps=0", "optim.milestones=2")
    train(tiny_train_config(*run, "optim.epochs=1", "model.normalization=cifar10"), tmp_path)
    with pytest.raises(ConfigError, match="model.normalization: 'cifar10' in the checkpoint, 'primary' now"):
        Trainer(tiny_train_config(*run, "optim.epochs=2"), tmp_path, resume=True)
    # A checkpoint from before the setting existed (CIFAR-10 statistics, no model.normalization):
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["config"]["model"]["normalization"]
    torch.save(state, tmp_path / "last.pt")
    trainer = Trainer(tiny_train_config(*run, "optim.epochs=2"), tmp_path, resume=True)  # config says primary
    assert trainer.model.mu.flatten().tolist() == pytest.approx(CIFAR10_MEAN)
    assert "cifar10" in trainer.normalization_source and "keeping the checkpoint's" in caplog.text


def test_a_per_image_run_records_it_in_its_card_and_resumes_with_it(tmp_path, tiny_train_config, caplog):
    run = ("method.warmup_epochs=0", "eval.steps=0", "optim.milestones=2", "model.normalization=per-image")
    train(tiny_train_config(*run, "optim.epochs=1"), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["normalization"] == "per-image" and (card["mean"], card["std"]) == ([0.0] * 3, [1.0] * 3)
    assert "per-image" in card["normalization_source"]
    assert load(tmp_path).normalization == "per-image"
    trainer = Trainer(tiny_train_config(*run, "optim.epochs=2"), tmp_path, resume=True)
    assert trainer.model.normalization == "per-image" and "keeping the checkpoint's" not in caplog.text


class StopAt(Exception):
    pass


def test_a_run_interrupted_and_resumed_equals_the_uninterrupted_one(finished_run, tmp_path):
    cfg, full_out, full = finished_run

    def stop_in_epoch_3(epoch: int, batch: int, batches: int, rate: float) -> None:
        if epoch == 2 and batch == 1:  # a step of epoch 3 has run; last.pt still holds epoch 2
            raise StopAt

    with pytest.raises(StopAt):
        train(cfg, tmp_path, on_step=stop_in_epoch_3)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    resumed = train(cfg, tmp_path, resume=True)
    assert without_timing(resumed) == without_timing(full)
    assert read_jsonl(tmp_path / "selection.jsonl") == read_jsonl(full_out / "selection.jsonl")
    a = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    b = torch.load(full_out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_an_interruption_while_the_best_model_is_written_is_repaired_by_resume(finished_run, tmp_path, monkeypatch):
    """Ctrl-C between best.pt and model.safetensors of an improving epoch: last.pt is written after
    both, so the resume repeats that epoch and the run ends with the best model of one never
    interrupted (found by the GPU suite's smoke run, whose Ctrl-C landed there)."""
    import engine.trainer as trainer_module

    cfg, full_out, full = finished_run
    best, improving = -1.0, []
    for record in full:
        if record["robust_acc"] > best:
            best, improving = record["robust_acc"], improving + [record["epoch"]]
    calls, real_export = [], trainer_module.export_model

    def export_interrupted_at_the_last_improvement(*args, **kwargs):
        calls.append(1)
        if len(calls) == len(improving):
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "export_model", export_interrupted_at_the_last_improvement)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path)
    last = tmp_path / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == improving[-1] - 1 if improving[-1] > 1 else not last.exists()
    monkeypatch.setattr(trainer_module, "export_model", real_export)
    train(cfg, tmp_path, resume=last.exists(), overwrite=not last.exists())
    a, b = load(tmp_path), load(full_out)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert json.loads((tmp_path / "model.json").read_text())["epoch"] == improving[-1]


def test_a_shorter_run_extended_by_resume_equals_the_longer_run(finished_run, tmp_path, tiny_train_config):
    cfg, _, full = finished_run
    train(tiny_train_config(*RUN, "optim.epochs=2"), tmp_path)
    resumed = train(tiny_train_config(*RUN, "optim.epochs=3"), tmp_path, resume=True)
    assert without_timing(resumed) == without_timing(full)


@pytest.mark.parametrize("changes, keys", [
    (("data.batch_size=8",), ["data.batch_size"]),
    (("model.name=wrn-16-1",), ["model.name"]),
    (("data.aux=", "method.aux_mode=none"), ["data.aux", "method.aux_mode"]),
    (("runtime.seed=5", "optim.epochs=4"), ["runtime.seed"]),  # the seed orders the data
])
def test_resume_refuses_changes_to_what_the_run_trains(finished_run, tmp_path, tiny_train_config, changes, keys):
    import shutil

    _, full_out, _ = finished_run
    run = shutil.copytree(full_out, tmp_path / "run")
    config_before = (run / "config.toml").read_bytes()
    with pytest.raises(ConfigError, match="would change what the run trains") as err:
        Trainer(tiny_train_config(*RUN, *changes), run, resume=True)
    listed = [key for key in ("data.batch_size", "model.name", "data.aux", "method.aux_mode", "runtime.seed",
                              "optim.epochs") if f"{key}:" in str(err.value)]
    assert listed == keys
    assert (run / "config.toml").read_bytes() == config_before


def test_resume_accepts_and_records_changes_that_only_say_how_or_how_long(finished_run, tmp_path, tiny_train_config):
    import shutil

    _, full_out, _ = finished_run
    run = shutil.copytree(full_out, tmp_path / "run")
    # A finished run resumed with a new safe flag but no more epochs trains nothing and keeps its config.
    config_before = (run / "config.toml").read_bytes()
    train(tiny_train_config(*RUN, "eval.batch_size=64"), run, resume=True)
    assert (run / "config.toml").read_bytes() == config_before
    records = train(tiny_train_config(*RUN, "optim.epochs=4", "runtime.kernels=torch"), run, resume=True)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    changes = [json.loads(line)["changes"] for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert changes[-1] == {"optim.epochs": [3, 4], "runtime.kernels": [changes[-1]["runtime.kernels"][0], "torch"]}
    assert tomllib.loads((run / "config.toml").read_text())["optim"]["epochs"] == 4


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_train_config):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*last.pt"):
        Trainer(tiny_train_config(), tmp_path, resume=True)


def test_a_checkpoint_without_the_training_state_this_engine_resumes_is_named_with_the_fix(finished_run, tmp_path):
    # As the engine wrote last.pt before checkpoints held every rank's RNG state: one "rng", no ranks.
    from engine.checkpoint import save_checkpoint
    from engine.run_dir import read_config

    cfg, out, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["rng"] = state.pop("rng_ranks")[0]
    del state["world_size"]
    save_checkpoint(run / "last.pt", state)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=f"{run / 'last.pt'} lacks rng_ranks, world_size: it was written by an "
                                         r"earlier biamat-engine.*start it again \(--overwrite\)"):
        Trainer(read_config(run), run, resume=True)
    assert (run / "last.pt").read_bytes() == before


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, tiny_train_config):
    real = METHODS["at"]
    calls = {"n": 0}

    def nan_in_epoch_2(model, batch, state, ctx):
        loss, stats = real(model, batch, state, ctx)
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 2:  # the second step of epoch 2
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setitem(METHODS, "at", nan_in_epoch_2)
    snapshot = {}

    def keep_last_pt(epoch: int, batch: int, batches: int, rate: float) -> None:
        if epoch == 1 and batch == 1:  # epoch 1 has been saved; its last.pt must survive
            snapshot["bytes"] = (tmp_path / "last.pt").read_bytes()

    with pytest.raises(NonFiniteLossError, match="NaN or inf in epoch 2") as err:
        train(tiny_train_config(*RUN), tmp_path, on_step=keep_last_pt)
    assert str(tmp_path / "last.pt") in str(err.value) and "--resume" in str(err.value)
    assert (tmp_path / "last.pt").read_bytes() == snapshot["bytes"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_a_diverging_learning_rate_stops_in_the_first_epoch_without_a_checkpoint(tmp_path, tiny_train_config):
    with pytest.raises(NonFiniteLossError, match="NaN or inf in epoch 1") as err:
        train(tiny_train_config("optim.lr=1e30"), tmp_path)
    assert not (tmp_path / "last.pt").exists()
    assert "nothing to resume" in str(err.value) and "still holds" not in str(err.value)


def test_diverged_batchnorm_statistics_never_reach_a_checkpoint(tmp_path, monkeypatch, tiny_train_config):
    """The loss can read finite while a running variance is already inf; saving that state would
    break the very resume the error message suggests."""
    real = METHODS["at"]
    calls = {"n": 0}

    def inf_variance_in_epoch_2(model, batch, state, ctx):
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 1:
            model.bn1.running_var.fill_(float("inf"))
        return real(model, batch, state, ctx)

    monkeypatch.setitem(METHODS, "at", inf_variance_in_epoch_2)
    with pytest.raises(NonFiniteLossError, match=r"bn1\.running_var became NaN or inf in epoch 2") as err:
        train(tiny_train_config(*RUN), tmp_path)
    assert "--resume" in str(err.value)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "selection.jsonl").exists()  # epoch 1 was warm-up; epoch 2 was not logged


def test_trades_without_auxiliary_data_trains(tmp_path, tiny_train_config):
    records = train(tiny_train_config("method.name=trades", "data.aux=", "method.aux_mode=none", "optim.epochs=1"),
                    tmp_path)
    (r,) = records
    assert r["loss"] == r["loss_pri"] and r["omega"] is None and r["n_high_ratio"] is None
    assert r["loss_low"] == r["loss_high"] == 0.0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["model_card"]["aux_classes"] == []


@pytest.mark.parametrize("overrides, error, message", [
    (("data.test=shapes:aux?n=32&size=16",), ConfigError, "has 20 classes.*has 10"),
    (("data.test=shapes:primary?n=32&size=24",), ConfigError, "held-out images are 24px, primary images 16px"),
    (("data.aux=shapes:aux?n=64&size=24",), ConfigError, "24px images, the primary 16px.*--size 16"),
    (("data.primary=shapes:triangles",), ValueError, "unknown shapes kind 'triangles'"),
    (("data.primary=missing.beton",), ValueError, "'missing.beton': no such file"),
    (("runtime.precision=fp16",), ConfigError, "fp16 needs a CUDA device"),
])
def test_bad_settings_fail_before_training_with_a_clear_error(overrides, error, message, tmp_path, tiny_train_config):
    with pytest.raises(error, match=message):
        train(tiny_train_config(*overrides), tmp_path)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path, tiny_train_config):
    with pytest.raises(ConfigError, match="no CUDA device; use --device cpu"):
        train(tiny_train_config("runtime.device=cuda"), tmp_path)


@pytest.mark.parametrize("aux_mode", ["labels", "uniform"])
def test_warmup_belongs_to_the_selection_labels_and_uniform_weight_aux_from_the_first_step(
        aux_mode, tmp_path, tiny_train_config):
    # The tiny config asks for one warm-up epoch; without the selection there is none.
    records = train(tiny_train_config(f"method.aux_mode={aux_mode}", "optim.epochs=1", "eval.steps=0"), tmp_path)
    assert records[0]["warmup"] is False
    assert records[0]["loss"] != pytest.approx(records[0]["loss_pri"])  # alpha * aux loss included
    written = TrainConfig.from_dict(tomllib.loads((tmp_path / "config.toml").read_text()))
    assert written.method.warmup_epochs == 0 and written.method.aux_mode == aux_mode


def test_warmup_is_kept_for_the_selection_and_zeroed_without_auxiliary_data():
    from engine.config import resolve_warmup

    biamat = load_config(preset="cifar10-at-biamat-imagenet")
    assert resolve_warmup(biamat) is biamat and biamat.method.warmup_epochs == 5
    assert resolve_warmup(load_config(preset="cifar10-at")).method.warmup_epochs == 0  # aux_mode none
    oat = load_config(preset="cifar10-at-biamat-imagenet", overrides=["method.aux_mode=uniform"])
    assert resolve_warmup(oat).method.warmup_epochs == 0


def _tf_l2_loss(w: torch.Tensor) -> torch.Tensor:
    return (w ** 2).sum() / 2  # tf.nn.l2_loss


@pytest.mark.parametrize("lrs", [(0.1, 0.1, 0.1), (0.1, 0.01, 0.05)])
def test_weight_decay_on_weights_equals_the_reference_ats_l2_loss_on_kernels(lrs):
    """The reference AT minimises loss + wd * sum(l2_loss(kernel)) with plain momentum SGD; the
    engine's `weights` scope, SGD weight_decay on conv and linear weights only, makes the same
    steps (the gradient of wd * l2_loss(w) is wd * w), through LR changes too."""
    from engine.schedule import build_optimizer

    torch.manual_seed(0)
    reference = build("wrn-10-1", 10, (7,))
    with torch.no_grad():  # BatchNorm scales and biases away from 1 and 0, where decay would show
        for p in reference.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    engine = build("wrn-10-1", 10, (7,))
    engine.load_state_dict(reference.state_dict())
    wd = 2e-4
    kernels = [m.weight for m in reference.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=lrs[0], momentum=0.9)
    eng_opt = build_optimizer(engine, OptimConfig(lr=lrs[0], weight_decay=wd, weight_decay_on="weights"))
    x, y, y_aux = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,)), torch.randint(0, 7, (3,))

    def task_loss(model):  # primary and auxiliary heads both in use, so every parameter has a gradient
        logits, (logits_aux,) = model.heads(model.features(x), [3])
        return F.cross_entropy(logits[:3], y[:3]) + F.cross_entropy(logits_aux, y_aux)

    for lr in lrs:
        for opt in (ref_opt, eng_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        ref_opt.zero_grad()
        loss = task_loss(reference) + wd * sum(_tf_l2_loss(w) for w in kernels)
        loss.backward()
        ref_opt.step()
        eng_opt.zero_grad()
        task_loss(engine).backward()
        eng_opt.step()
    for (name, a), b in zip(engine.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_weight_decay_scope_all_decays_batchnorm_and_biases_weights_does_not():
    from engine.schedule import parameter_groups

    model = build("wrn-10-1", 10, (7,))
    names = {id(p): n for n, p in model.named_parameters()}
    (everything,) = parameter_groups(model, 5e-4, "all")
    assert everything["weight_decay"] == 5e-4 and len(everything["params"]) == len(list(model.parameters()))
    decayed, kept = parameter_groups(model, 2e-4, "weights")
    assert (decayed["weight_decay"], kept["weight_decay"]) == (2e-4, 0.0)
    decayed_names = {names[id(p)] for p in decayed["params"]}
    kept_names = {names[id(p)] for p in kept["params"]}
    assert decayed_names == {n for n in names.values() if "conv" in n.lower() or n.endswith("fc.weight")
                             or n.startswith("aux_fc.") and n.endswith(".weight")}
    assert all(".bn" in n or n.startswith("bn1.") or n.endswith(".bias") for n in kept_names)
    assert "aux_fc.0.weight" in decayed_names and "fc.bias" in kept_names and "bn1.weight" in kept_names


def test_resuming_with_another_weight_decay_scope_is_a_clear_error(tmp_path, tiny_train_config):
    run = ("optim.epochs=1", "eval.steps=0", "method.warmup_epochs=0")
    train(tiny_train_config(*run, "optim.weight_decay_on=weights"), tmp_path)
    with pytest.raises(ValueError, match="optim.weight_decay_on: 'weights' in the checkpoint, 'all' now"):
        Trainer(tiny_train_config(*run, "optim.weight_decay_on=all"), tmp_path, resume=True)


def test_the_per_epoch_check_attacks_with_the_runs_eval_step(tmp_path, monkeypatch, tiny_train_config):
    import engine.trainer as trainer_module

    seen = []
    real = trainer_module.accuracy

    def spy(*args, **kw):
        seen.append((args[3], kw["eps"], kw["step_size"]))
        return real(*args, **kw)

    monkeypatch.setattr(trainer_module, "accuracy", spy)
    train(tiny_train_config("optim.epochs=1", "method.warmup_epochs=0", "attack.eps=0.031",
                            "attack.step_size=0.007", "eval.step_size=0.003"), tmp_path)
    assert seen[-1] == ("pgd2", 0.031, 0.003)
    assert json.loads((tmp_path / "model.json").read_text())["eval_step_size"] == 0.003


def test_learning_rate_at_the_milestones():
    optim = OptimConfig(epochs=10, lr=0.1, milestones=[0.6, 0.9], gamma=0.1)
    spe = 5  # steps per epoch; step s is in epoch (s - 1) // spe
    assert learning_rate(optim, 1, spe) == 0.1
    assert learning_rate(optim, 6 * spe, spe) == 0.1  # last step of epoch index 5
    assert learning_rate(optim, 6 * spe + 1, spe) == pytest.approx(0.01)  # epoch index 6 = 60%
    assert learning_rate(optim, 9 * spe, spe) == pytest.approx(0.01)
    assert learning_rate(optim, 9 * spe + 1, spe) == pytest.approx(0.001)  # 90%
    # Milestones count completed epochs: 99 decays from the first step of epoch 100.
    trades = OptimConfig(epochs=110, lr=0.1, milestones=[99, 104])
    assert learning_rate(trades, 99 * 391, 391) == 0.1
    assert learning_rate(trades, 99 * 391 + 1, 391) == pytest.approx(0.01)
    assert learning_rate(trades, 104 * 391, 391) == pytest.approx(0.01)
    assert learning_rate(trades, 104 * 391 + 1, 391) == pytest.approx(0.001)


def test_learning_rate_warmup_is_linear_then_the_peak():
    optim = OptimConfig(epochs=10, lr=0.2, milestones=[5], lr_warmup_epochs=2)
    spe = 10
    assert learning_rate(optim, 1, spe) == pytest.approx(0.2 / 20)
    assert learning_rate(optim, 10, spe) == pytest.approx(0.1)
    assert learning_rate(optim, 20, spe) == pytest.approx(0.2)
    assert learning_rate(optim, 21, spe) == pytest.approx(0.2)
    assert learning_rate(optim, 51, spe) == pytest.approx(0.02)


def test_runtime_on_cpu_is_fp32_eager_without_loss_scaling():
    runtime, resolved = resolve_runtime(RuntimeConfig(device="cpu"))
    assert (runtime.precision, runtime.compile, runtime.amp_dtype) == ("fp32", False, None)
    assert not runtime.grad_scaler().is_enabled()
    assert (resolved.device, resolved.precision, resolved.compile) == ("cpu", "fp32", "off")
    from kernels.dispatch import auto_for_device

    assert resolved.kernels == auto_for_device(torch.device("cpu"))  # one name, or auto where it is per kernel


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runtime_resolves_bf16_on_gpus_that_have_it():
    runtime, resolved = resolve_runtime(RuntimeConfig(device="cuda"))
    major, _ = torch.cuda.get_device_capability()
    assert runtime.precision == ("bf16" if major >= 8 else "fp16")
    assert runtime.compile and resolved.compile == "on"
    assert runtime.grad_scaler().is_enabled() == (runtime.precision == "fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_tiny_compiled_mixed_precision_run_on_cuda(tmp_path, tiny_train_config):
    records = train(tiny_train_config(*RUN, "runtime.device=cuda", "runtime.compile=on", "optim.epochs=2"), tmp_path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert not [k for k in last["model"] if "_orig_mod." in k]
    assert tomllib.loads((tmp_path / "config.toml").read_text())["runtime"]["compile"] == "on"
    assert load(tmp_path)(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_a_compiled_run_on_cpu_matches_the_eager_run(tmp_path, tiny_train_config):
    """torch.compile of the trunk (train/eval, frozen-weight attack and weight-gradient variants)
    computes what eager does; its files carry no `_orig_mod.` prefix."""
    eager = train(tiny_train_config("optim.epochs=2", "runtime.compile=off"), tmp_path / "eager")
    compiled = train(tiny_train_config("optim.epochs=2", "runtime.compile=on"), tmp_path / "compiled")
    for e, c in zip(eager, compiled):
        for key in ("loss", "loss_pri", "loss_low", "loss_high"):
            assert c[key] == pytest.approx(e[key], rel=2e-2, abs=1e-3), (c["epoch"], key)
    state = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    assert not any("_orig_mod." in k for k in state["model"])
    assert 'compile = "on"' in (tmp_path / "compiled" / "config.toml").read_text()


def test_a_folder_with_results_but_no_run_is_never_cleared_without_overwrite(tmp_path, tiny_train_config):
    """Results someone kept (a best model, an eval report) with no last.pt beside them are not a
    run to replace: training refuses, naming them, and touches nothing."""
    kept = {"best.pt": b"best", "eval.json": b'{"clean_acc": 0.9}', "notes.txt": b"mine"}
    for name, data in kept.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(FileExistsError, match=r"already holds best\.pt, eval\.json, notes\.txt: .*--overwrite"):
        Trainer(tiny_train_config(*RUN), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept


def test_config_toml_finds_its_data_from_any_working_directory(tmp_path, monkeypatch, tiny_train_config):
    """Relative data paths are stored absolute, so a resume from another folder finds them."""
    from loaders.beton import write_beton
    from loaders.sources.shapes import make_shapes

    data = tmp_path / "data"
    write_beton(data / "train.beton", make_shapes("primary", "train", n=64, size=16), format="shapes")
    write_beton(data / "test.beton", make_shapes("primary", "test", n=16, size=16), format="shapes", split="test")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_train_config("data.primary=data/train.beton", "data.test=data/test.beton", "data.aux=",
                            "method.aux_mode=none", "optim.epochs=1")
    train(cfg, tmp_path / "run")
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())["data"]
    assert saved["primary"] == str(data / "train.beton") and saved["test"] == str(data / "test.beton")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from engine.run_dir import read_config

    resumed = read_config(tmp_path / "run")
    records = train(dataclasses.replace(resumed, optim=dataclasses.replace(resumed.optim, epochs=2)),
                    tmp_path / "run", resume=True)
    assert [r["epoch"] for r in records] == [1, 2]


def test_resume_of_a_checkpoint_older_than_a_setting_takes_the_setting_and_records_it():
    from engine.resume import changes_on_resume

    saved = {"optim": {"epochs": 3, "lr": 0.1}, "attack": {"eps": 0.03}}
    requested = {"optim": {"epochs": 3, "lr": 0.1}, "attack": {"eps": 0.03, "bn_stats": "step"}}
    assert changes_on_resume(saved, requested, "RUN") == {"attack.bn_stats": [None, "step"]}
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.1 in the checkpoint, 0\.2 now"):
        changes_on_resume(saved, {**requested, "optim": {"epochs": 3, "lr": 0.2}}, "RUN")
    # A setting the checkpoint predates, asked for at another value than the one the run had
    # (the default: what the engine did before the setting existed), is refused like any change.
    with pytest.raises(ConfigError, match=r"model\.aux_bn: the checkpoint predates it \(trained as 'shared'\), "
                                          r"'separate' now"):
        changes_on_resume(saved, {**requested, "model": {"aux_bn": "separate"}}, "RUN")
    assert changes_on_resume(saved, {**requested, "model": {"aux_bn": "shared"}}, "RUN")["model.aux_bn"] == \
        [None, "shared"]
