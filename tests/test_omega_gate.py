"""method.omega_when = accuracy: the warm-up ends at the first epoch end where the primary head's
accuracy on a held-out slice of the training data reaches the level (or at the latest epoch),
the slice never trains, the decision is recorded and survives a resume."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from engine.config import ConfigError, MethodConfig
from engine.data import build_run_data
from engine.methods import MethodState
from engine.omega_gate import OmegaGate, carve_holdout
from engine.trainer import train
from loaders.datasets import open_dataset

pytestmark = pytest.mark.usefixtures("torch_single_thread")

GATED = ("method.omega_when=accuracy", "method.omega_holdout=16", "method.warmup_epochs=0", "method.omega_latest_epoch=2")


def scripted(accuracies: list[float], n: int = 100):
    """A held-out measurement that returns the given accuracies, one per call."""
    left = iter(accuracies)
    return lambda *args, **kwargs: (round(next(left) * n), n)


def _decide(method: MethodConfig, accuracies: list[float]) -> tuple[list[bool], MethodState, list[dict]]:
    gate, state = OmegaGate(method), MethodState()
    measure, warmup, records = scripted(accuracies), [], []
    for done in range(len(accuracies)):
        warmup.append(gate.in_warmup(done, state))
        records.append(gate.after_epoch(done + 1, state, measure))
    return warmup, state, records


def test_the_warmup_ends_at_the_first_epoch_end_that_reaches_the_level():
    method = MethodConfig(omega_when="accuracy", omega_accuracy=0.5, omega_latest_epoch=10, warmup_epochs=0)
    warmup, state, records = _decide(method, [0.1, 0.3, 0.49, 0.5, 0.2, 0.9])
    assert state.warmup_ended == 4
    assert warmup == [True, True, True, True, False, False]
    assert [r.get("omega_heldout_acc") for r in records] == [0.1, 0.3, 0.49, 0.5, None, None]
    assert [r["omega_warmup_ended"] for r in records] == [None, None, None, 4, 4, 4]
    assert records[0]["omega_heldout_n"] == 100


def test_warmup_epochs_is_the_least_the_warmup_lasts():
    method = MethodConfig(omega_when="accuracy", omega_accuracy=0.5, omega_latest_epoch=10, warmup_epochs=3)
    warmup, state, _ = _decide(method, [0.9, 0.9, 0.9, 0.9])
    assert state.warmup_ended == 3 and warmup == [True, True, True, False]


def test_the_latest_epoch_ends_the_warmup_whatever_the_accuracy():
    method = MethodConfig(omega_when="accuracy", omega_accuracy=0.5, omega_latest_epoch=3, warmup_epochs=1)
    warmup, state, _ = _decide(method, [0.0, 0.1, 0.1, 0.1, 0.1])
    assert state.warmup_ended == 3 and warmup == [True, True, True, False, False]


def test_omega_when_warmup_measures_nothing_and_keeps_the_fixed_warmup():
    gate, state = OmegaGate(MethodConfig(warmup_epochs=2)), MethodState()

    def never(*args):
        raise AssertionError("measured")

    assert [gate.in_warmup(e, state) for e in range(4)] == [True, True, False, False]
    assert gate.after_epoch(1, state, never) == {} and state.warmup_ended is None


def test_the_held_out_slice_never_trains(tiny_train_config):
    cfg = tiny_train_config(*GATED)
    full = open_dataset(cfg.data.primary, "train")
    train_idx, held_idx = carve_holdout(len(full), 16, seed=0)
    assert len(held_idx) == 16 and len(train_idx) == len(full) - 16
    assert not set(train_idx) & set(held_idx) and sorted([*train_idx, *held_idx]) == list(range(len(full)))
    assert np.array_equal(carve_holdout(len(full), 16, seed=0)[1], held_idx)  # from the seed
    assert not np.array_equal(carve_holdout(len(full), 16, seed=1)[1], held_idx)

    data = build_run_data(cfg.data, use_aux=True, device=torch.device("cpu"), seed=0, eval_n=32,
                          kernel_impl="torch", omega_holdout=16)
    assert np.array_equal(data.omega_index, held_idx)
    assert torch.equal(data.omega_y, torch.from_numpy(full.labels[held_idx]))
    trained = data.stream.primary.dataset
    assert np.array_equal(trained.images, full.images[train_idx])
    # One epoch of training batches visits exactly the rest, none of the slice.
    seen = Counter()
    for batch in data.stream:
        seen.update(batch.y_pri.tolist())
    assert seen == Counter(full.labels[train_idx].tolist())
    held_rows = {full.images[i].tobytes() for i in held_idx}
    assert not any(img.tobytes() in held_rows for img in trained.images)


def test_bad_slices_and_latest_epochs_are_refused_by_name(tiny_train_config, tmp_path):
    with pytest.raises(ConfigError, match="method.omega_latest_epoch"):
        tiny_train_config(*GATED, "method.omega_latest_epoch=3")  # optim.epochs = 3
    with pytest.raises(ConfigError, match="method.omega_latest_epoch"):
        tiny_train_config(*GATED, "method.warmup_epochs=2", "method.omega_latest_epoch=1")
    with pytest.raises(ConfigError, match="method.omega_holdout = 64"):
        train(tiny_train_config(*GATED, "method.omega_holdout=64"), tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_outside_biamat_mode_the_option_resolves_away(tiny_train_config, tmp_path):
    records = train(tiny_train_config(*GATED, "method.aux_mode=labels", "optim.epochs=1"), tmp_path)
    assert "omega_heldout_acc" not in records[0]
    assert 'omega_when = "warmup"' in (tmp_path / "config.toml").read_text()


def test_a_run_fixes_omega_after_the_scripted_epoch_and_records_it(tiny_train_config, tmp_path, monkeypatch):
    monkeypatch.setattr("engine.trainer.heldout_counts", scripted([0.2, 0.7], n=16))
    records = train(tiny_train_config(*GATED, "method.omega_accuracy=0.5"), tmp_path)
    assert [r["warmup"] for r in records] == [True, True, False]
    assert [r["omega"] is None for r in records] == [True, True, False]
    assert [r.get("omega_heldout_acc") for r in records] == [3 / 16, 11 / 16, None]  # 0.2 and 0.7 of 16
    assert [r["omega_warmup_ended"] for r in records] == [None, 2, 2]
    assert records[0]["omega_heldout_n"] == 16
    for r in records[:2]:  # the auxiliary loss weighs nothing during the warm-up
        assert r["loss"] == pytest.approx(r["loss_pri"])
    assert records[2]["loss"] != pytest.approx(records[2]["loss_pri"])
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["method"]["warmup_ended"] == 2 and ckpt["method"]["omega"] == records[2]["omega"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["omega_warmup_ended"] == 2

    pytest.importorskip("matplotlib")
    from studies.analysis.report import write_analysis

    report = write_analysis([tmp_path]).report.read_text()
    assert "### When omega was fixed" in report and "on 16 held-out primary training images reached 50.00%" in report
    assert "| 1 | 18.75 |  |" in report and "| 2 | 68.75 | yes |" in report
    assert f"Omega {records[2]['omega']:.4f}, first recorded at epoch 3." in report


class StopAt(Exception):
    pass


def test_a_resumed_run_keeps_the_decision(tiny_train_config, tmp_path):
    """The real measurement, level 1.0 (never reached): the latest epoch, 1, ends the warm-up.
    Stopped in epoch 3, after the decision was saved, the resumed run ends as an unbroken one."""
    cfg = tiny_train_config(*GATED, "method.omega_latest_epoch=1", "method.omega_accuracy=1.0")
    full = train(cfg, tmp_path / "full")

    def stop_in_epoch_3(epoch: int, batch: int, batches: int, rate: float) -> None:
        if epoch == 2 and batch == 1:
            raise StopAt

    with pytest.raises(StopAt):
        train(cfg, tmp_path / "cut", on_step=stop_in_epoch_3)
    resumed = train(cfg, tmp_path / "cut", resume=True)
    timing = ("images_per_s", "seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in timing} for r in full]
    assert [r["warmup"] for r in full] == [True, False, False]
    assert full[0]["omega_warmup_ended"] == 1 and full[1]["omega"] is not None
