"""`runtime.tensorboard = true`: the event files hold exactly metrics.jsonl's numbers, one point
per epoch even across resumes (a resume from an older checkpoint rewrites its later epochs), and
a missing tensorboard package stops the run before anything is built or written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from engine.run_dir import RunDir
from engine.tensorboard_log import SKIPPED, tag
from engine.trainer import Trainer, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TB = ("runtime.tensorboard=true",)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard would show for the run: {tag: [(step, value), ...]}."""
    events = EventAccumulator(str(RunDir(run).tensorboard))  # purges orphaned points as TensorBoard does
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers in the same shape, computed here from the file."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for key, value in r.items():
            if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(tag(key), []).append((r["epoch"], float(value)))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key  # one point per epoch
        # TensorBoard stores float32.
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in want[key]], rel=1e-6), key


def test_event_files_hold_the_metrics_of_every_epoch(tmp_path, tiny_train_config):
    run = tmp_path / "run"
    train(tiny_train_config(*TB, "optim.epochs=2"), run)
    got = scalars(run)
    assert_same(got, expected(run))
    # Epoch 1 is warm-up (no omega yet), epoch 2 routed: None is a gap, not a zero.
    assert [s for s, _ in got["routing/omega"]] == [2]
    assert {"loss/loss_pri", "loss/loss_high", "heldout/robust_acc", "optim/lr", "routing/n_high_ratio",
            "time/seconds"} <= set(got)


def test_a_resumed_run_has_one_point_per_epoch(tmp_path, tiny_train_config):
    run = tmp_path / "run"
    short = (*TB, "method.warmup_epochs=0")  # so that a 1-epoch run is valid
    train(tiny_train_config(*short, "optim.epochs=1"), run)
    shutil.copy(run / "last.pt", tmp_path / "epoch1.pt")
    train(tiny_train_config(*short, "optim.epochs=2"), run, resume=True)
    assert_same(scalars(run), expected(run))
    # As after a crash between epoch 2's log line and its checkpoint: last.pt says epoch 1, the
    # events already hold epoch 2, which the resume writes again.
    shutil.copy(tmp_path / "epoch1.pt", run / "last.pt")
    train(tiny_train_config(*short, "optim.epochs=2"), run, resume=True)
    assert len(list(RunDir(run).tensorboard.glob("events.out.tfevents.*"))) == 3
    assert_same(scalars(run), expected(run))

    # --overwrite starts the curves again: the replaced run's event files are gone.
    train(tiny_train_config(*short, "optim.epochs=1"), run, overwrite=True)
    assert len(list(RunDir(run).tensorboard.glob("events.out.tfevents.*"))) == 1
    assert_same(scalars(run), expected(run))


def test_without_the_package_the_run_stops_before_it_starts(tmp_path, tiny_train_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"runtime.tensorboard = true needs the tensorboard package: "
                                                  r"pip install tensorboard") as err:
        Trainer(tiny_train_config(*TB), tmp_path / "run")
    assert err.value.name == "tensorboard"  # cli/errors.py reports it as a missing extra, exit 1
    assert not (tmp_path / "run").exists()
    # Off, nothing imports it.
    Trainer(tiny_train_config("optim.epochs=1", "method.warmup_epochs=0"), tmp_path / "plain").fit()
    assert not RunDir(tmp_path / "plain").tensorboard.exists()
