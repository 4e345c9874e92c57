"""Pre-training -> fine-tuning (paper Table 3 / Table 7, Appendix E): a run started from another
run's weights (`init.source`, `train --init-from`) and its learning rate continued from the
source's epoch (`optim.schedule_offset = "global-step"`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from engine.checkpoint import export_model, save_checkpoint
from engine.config import ConfigError, OptimConfig, TrainConfig
from engine.init_from import start_from_source
from engine.models import build, model_card, primary_state_dict
from engine.run_dir import read_config, read_json_lines
from engine.schedule import learning_rate, schedule_offset
from engine.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SPE = 2  # steps per epoch of the tiny runs: 64 images in batches of 32
# The pre-training: 20-class shapes, no auxiliary data, 2 epochs, decay after global epoch 3.
SOURCE = ("data.primary=shapes:aux?n=64&size=16", "data.test=shapes:aux?n=32&size=16", "data.aux=",
          "method.aux_mode=none", "optim.epochs=2", "optim.milestones=3")
# The fine-tuning on the 10-class shapes.
FINE = ("data.aux=", "method.aux_mode=none", "optim.epochs=2", "optim.milestones=3")
HEADS = ("fc.", "aux_fc.")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_train_config) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("pretrain")
        train(tiny_train_config(*SOURCE), out)
    finally:
        torch.set_num_threads(threads)
    return out


def trunk(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(HEADS)}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


# ---- the run starts from the source ---------------------------------------------------------------
def test_a_fine_tune_starts_from_the_source_trunk_with_a_new_head(source_run, tmp_path, tiny_train_config):
    best = torch.load(source_run / "best.pt", weights_only=True)
    trainer = Trainer(tiny_train_config(*FINE, f"init.source={source_run}"), tmp_path / "ft")
    state = trainer.model.state_dict()
    assert_same(trunk(state), trunk(best["model"]))  # BatchNorm statistics and mu/sigma included
    assert state["fc.weight"].shape == (10, best["model"]["fc.weight"].shape[1])  # 20 classes -> 10

    # config.toml records what was asked; run.json what was read: the file, its epoch, its sha256, the heads.
    assert tomllib.loads((tmp_path / "ft" / "config.toml").read_text())["init"] == {
        "source": str(source_run.resolve()), "heads": "auto"}
    digest = hashlib.sha256((source_run / "best.pt").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["init"] == {
        "file": str((source_run / "best.pt").resolve()), "epoch": best["epoch"], "sha256": digest, "heads": "new"}
    assert trainer.normalization_source.endswith(f"through init.source {(source_run / 'best.pt').resolve()}")


def test_keep_carries_the_primary_head_when_the_classes_match(source_run, tmp_path, tiny_train_config):
    last = torch.load(source_run / "last.pt", weights_only=True)["model"]
    same_data = SOURCE[:2] + ("data.aux=", "method.aux_mode=none")
    for heads in ("keep", "auto"):
        trainer = Trainer(tiny_train_config(*same_data, f"init.source={source_run / 'last.pt'}", f"init.heads={heads}"),
                          tmp_path / heads)
        assert_same(trainer.model.state_dict(), last)
        assert trainer.record.init.heads == "keep" and trainer.cfg.init.heads == heads


def test_a_fine_tune_continues_the_schedule_and_its_resume_never_reads_the_source(
        source_run, tmp_path, tiny_train_config):
    copy = tmp_path / "source.pt"  # a copy we may delete
    shutil.copy(source_run / "last.pt", copy)  # epoch 2 of the pre-training
    cfg = tiny_train_config(*FINE, "optim.epochs=1", f"init.source={copy}", "optim.schedule_offset=global-step")
    out = tmp_path / "ft"
    first = train(cfg, out)
    copy.unlink()
    saved = read_config(out)  # what `train --resume` runs: the run's own config.toml, here extended
    records = train(dataclasses.replace(saved, optim=dataclasses.replace(saved.optim, epochs=2)), out, resume=True)
    assert records[0] == first[0]

    # The fine-tune's epochs are the pre-training's global epochs 3 and 4: 0.1, then the decay after 3.
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.01])
    pretraining = dataclasses.replace(cfg.optim, epochs=4)  # the source's schedule, run on to epoch 4
    for r in records:
        assert r["lr"] == learning_rate(pretraining, 2 * SPE + r["step"], SPE)
    init = json.loads((out / "run.json").read_text())["init"]
    assert init["file"] == str(copy.resolve()) and init["epoch"] == 2


def _as_written_before_run_json(out: Path) -> None:
    """Rewrites a run directory as the engine wrote it before run.json: the source's facts as
    [init] settings of config.toml and of the checkpoint's config, init.source the file read."""
    import tomli_w

    facts = json.loads((out / "run.json").read_text())["init"]
    old_init = {"source": facts["file"], "heads": facts["heads"], "source_epoch": facts["epoch"],
                "source_sha256": facts["sha256"]}
    config = tomllib.loads((out / "config.toml").read_text())
    (out / "config.toml").write_text(tomli_w.dumps({**config, "init": old_init}))
    state = torch.load(out / "last.pt", weights_only=True)
    del state["run_record"]
    save_checkpoint(out / "last.pt", {**state, "config": {**state["config"], "init": old_init}})
    (out / "run.json").unlink()


@pytest.mark.parametrize("made", ["before run.json", "run.json deleted"])
def test_a_resume_takes_the_source_facts_from_its_checkpoint_and_writes_run_json(
        source_run, tmp_path, tiny_train_config, made):
    cfg = tiny_train_config(*FINE, "optim.epochs=1", f"init.source={source_run / 'last.pt'}",
                            "optim.schedule_offset=global-step")
    out = tmp_path / "ft"
    train(cfg, out)
    written = json.loads((out / "run.json").read_text())
    if made == "before run.json":
        _as_written_before_run_json(out)
    else:
        (out / "run.json").unlink()
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text()) == written
    # The second epoch is the pre-training's global epoch 4: after its decay (milestone 3).
    assert [r["lr"] for r in read_json_lines(out / "metrics.jsonl")] == pytest.approx([0.1, 0.01])


# ---- the schedule's offset ------------------------------------------------------------------------
@pytest.mark.parametrize("milestones, warmup", [([0.6, 0.9], 0.0), ([60, 90], 0.0), ([60, 90], 66.5)])
def test_a_fine_tunes_learning_rates_are_the_tail_of_the_pretraining_schedule(milestones, warmup):
    spe = 391
    pretraining = OptimConfig(epochs=100, milestones=milestones, lr_warmup_epochs=warmup)
    fine = dataclasses.replace(pretraining, epochs=35)  # Appendix E's example: the best epoch is 65
    tail = [learning_rate(pretraining, step, spe) for step in range(65 * spe + 1, 100 * spe + 1)]
    assert [learning_rate(fine, step, spe, 65) for step in range(1, 35 * spe + 1)] == tail
    if not warmup:
        # "the learning rate of the fine-tuning phase commenced at 0.01 and decreased to 0.001 after 25 epochs"
        assert tail[0] == tail[25 * spe - 1] == pytest.approx(0.01) and tail[25 * spe] == pytest.approx(0.001)


def test_schedule_offset_is_the_source_epoch_only_with_global_step(tiny_train_config):
    assert schedule_offset(tiny_train_config("init.source=x.pt"), 65) == 0
    continued = tiny_train_config("init.source=x.pt", "optim.schedule_offset=global-step")
    assert schedule_offset(continued, 65) == 65
    with pytest.raises(ValueError, match="has not been read"):
        schedule_offset(continued, -1)
    with pytest.raises(ConfigError, match="init.source, which is empty: give the pre-trained run with --init-from"):
        tiny_train_config("optim.schedule_offset=global-step")


# ---- heads, formats and errors, on hand-built sources ---------------------------------------------
def write_source(path: Path, aux_classes=(20,), num_classes=10, name="wrn-10-1", epoch=4) -> dict:
    torch.manual_seed(123)
    model = build(name, num_classes, aux_classes, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    card = model_card(model, name, aux_classes=list(aux_classes), normalization_source="the test's")
    save_checkpoint(path, {"model": model.state_dict(), "model_card": card, "epoch": epoch})
    return model.state_dict()


def started(tiny_train_config, source: Path, *overrides: str, aux_classes=(20,), num_classes=10, name="wrn-10-1"):
    cfg = tiny_train_config(f"init.source={source}", *overrides)
    torch.manual_seed(0)
    model = build(name, num_classes, aux_classes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    init, _ = start_from_source(model, cfg)
    return init, model.state_dict(), fresh


def test_keep_carries_auxiliary_heads_only_of_the_same_class_counts(tmp_path, tiny_train_config):
    src = write_source(tmp_path / "s.pt", aux_classes=(20,))
    init, state, _ = started(tiny_train_config, tmp_path / "s.pt", "init.heads=keep")
    assert_same(state, src)
    assert (init.heads, init.epoch) == ("keep", 4)

    init, state, fresh = started(tiny_train_config, tmp_path / "s.pt", "init.heads=keep", aux_classes=(7,))
    assert_same({k: v for k, v in state.items() if not k.startswith("aux_fc.")},
                {k: v for k, v in src.items() if not k.startswith("aux_fc.")})
    assert torch.equal(state["aux_fc.0.weight"], fresh["aux_fc.0.weight"])  # fresh: 20 classes are not 7

    init, state, fresh = started(tiny_train_config, tmp_path / "s.pt", "init.heads=new")
    assert_same(trunk(state), trunk(src))
    for k in ("fc.weight", "fc.bias", "aux_fc.0.weight"):
        assert torch.equal(state[k], fresh[k]), k
    assert init.heads == "new"


def test_a_per_image_source_hands_over_its_standardisation_with_a_warning(tmp_path, tiny_train_config, caplog):
    # A per-image pre-training (the AT presets') fine-tuned under a per-channel config: the trunk
    # keeps the normalisation it was trained with, as it keeps its mean and std.
    torch.manual_seed(7)
    source = build("wrn-10-1", 10, (20,), normalization="per-image")
    card = model_card(source, "wrn-10-1", aux_classes=[20], normalization_source="the test's")
    save_checkpoint(tmp_path / "s.pt", {"model": source.state_dict(), "model_card": card, "epoch": 3})
    cfg = tiny_train_config(f"init.source={tmp_path / 's.pt'}", "init.heads=keep")
    model = build("wrn-10-1", 10, (20,), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    start_from_source(model, cfg)
    assert model.normalization == "per-image"
    assert "normalises with per-image standardisation, not the mean [0.1" in caplog.text
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.eval()(x), source.eval()(x))


def test_a_model_safetensors_hands_over_its_trunk_and_epoch(tmp_path, tiny_train_config):
    torch.manual_seed(5)
    model = build("wrn-10-1", 20)
    export_model(tmp_path, primary_state_dict(model), {**model_card(model, "wrn-10-1"), "epoch": 7})
    init, state, _ = started(tiny_train_config, tmp_path / "model.safetensors", "optim.schedule_offset=global-step")
    assert_same(trunk(state), trunk(model.state_dict()))
    assert (init.heads, init.epoch) == ("new", 7)

    export_model(tmp_path / "noepoch", primary_state_dict(model), model_card(model, "wrn-10-1"))
    with pytest.raises(ConfigError, match="does not give one; start from the run's best.pt"):
        started(tiny_train_config, tmp_path / "noepoch" / "model.safetensors", "optim.schedule_offset=global-step")


@pytest.mark.parametrize("overrides, source_kw, error, message", [
    (("init.heads=keep",), dict(num_classes=100), ConfigError,
     r"primary head of .* has 100 classes, this run's primary data has 10; use --init-heads new"),
    ((), dict(name="wrn-16-1"), ConfigError,
     r"is a wrn-16-1, this run builds wrn-10-1 \(model.name\).*give --model wrn-16-1"),
])
def test_a_source_that_does_not_fit_is_a_clear_error(tmp_path, tiny_train_config, overrides, source_kw, error, message):
    write_source(tmp_path / "s.pt", **source_kw)
    with pytest.raises(error, match=message):
        started(tiny_train_config, tmp_path / "s.pt", *overrides)


def test_a_missing_source_or_a_run_without_best_is_a_clear_error(tmp_path, tiny_train_config):
    with pytest.raises(FileNotFoundError, match="no such run directory or file"):
        started(tiny_train_config, tmp_path / "nothing")
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no best.pt .* Give its last.pt"):
        started(tiny_train_config, tmp_path / "run")


# ---- through the CLI ------------------------------------------------------------------------------
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
CLI_FINE = ["--primary", "shapes:primary?n=64&size=16", "--test", "shapes:primary?n=32&size=16",
            "--device", "cpu", "--set", "data.batch_size=32", "--set", "attack.steps=2", "--set", "eval.n=32",
            "--set", "eval.steps=2", "--epochs", "1"]


def test_train_init_from_through_the_cli(source_run, tmp_path):
    out = tmp_path / "ft"
    result = runner.invoke(app, ["train", *CLI_FINE, "--model", "wrn-10-1", "--init-from", str(source_run),
                                 "--set", "optim.schedule_offset=global-step", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert tomllib.loads((out / "config.toml").read_text())["init"] == {"source": str(source_run.resolve()),
                                                                       "heads": "auto"}
    init = json.loads((out / "run.json").read_text())["init"]
    assert init["file"] == str((source_run / "best.pt").resolve()) and init["heads"] == "new"

    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--init-from", str(source_run)])
    assert result.exit_code == 2 and "drop --init-from" in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "wrn-16-1"], "is a wrn-10-1, this run builds wrn-16-1"),
    (["--model", "wrn-10-1", "--init-heads", "keep"], "has 20 classes, this run's primary data has 10"),
    (["--model", "wrn-10-1", "--init-from", "no/such/run"], "no/such/run: no such run directory or file"),
    (["--model", "wrn-10-1", "--init-heads", "both"], "init.heads = 'both': expected one of auto, keep, new"),
])
def test_cli_errors_exit_1_with_the_message(source_run, tmp_path, args, message):
    out = tmp_path / "ft"
    result = runner.invoke(app, ["train", *CLI_FINE, "--init-from", str(source_run), *args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_the_resolved_init_reads_back_to_the_same_config(tiny_train_config):
    from engine.config import to_toml

    cfg = tiny_train_config("init.source=/x/best.pt", "init.heads=new", "optim.schedule_offset=global-step")
    assert TrainConfig.from_dict(tomllib.loads(to_toml(cfg))) == cfg


@pytest.mark.parametrize("key", ["source_epoch", "source_sha256"])
def test_what_the_trainer_reads_from_the_source_is_not_a_setting(tiny_train_config, key):
    with pytest.raises(ConfigError, match=f"init.{key}: not a setting; .* records them in RUN_DIR/run.json"):
        tiny_train_config("init.source=/x/best.pt", f"init.{key}=65")
