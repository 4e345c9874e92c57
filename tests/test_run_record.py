"""RUN_DIR/run.json (engine/run_record.py): what a run found at start, written before its
config.toml, read back as written, and refused with the file's name when it is not a record."""

from __future__ import annotations

import json

import pytest

from engine.run_dir import RunDir
from engine.config import split_produced
from engine.run_record import InitSource, RunRecord, old_init_source, read_run_record, write_run_record
from engine.trainer import Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SOURCE = InitSource(file="/runs/pre/best.pt", epoch=65, sha256="ab" * 32, heads="new")


def test_a_run_from_scratch_records_no_source_before_its_first_epoch(tmp_path, tiny_train_config):
    Trainer(tiny_train_config(), tmp_path / "run").release()  # set up, not trained
    files = RunDir(tmp_path / "run")
    assert json.loads(files.run_record.read_text()) == {"format": 1, "init": None}
    assert read_run_record(files) == RunRecord() and RunRecord().source_epoch == -1


def test_a_record_reads_back_as_written_and_none_when_absent(tmp_path):
    files = RunDir(tmp_path)
    assert read_run_record(files) is None
    write_run_record(files, RunRecord(SOURCE))
    assert read_run_record(files) == RunRecord(SOURCE) and read_run_record(files).source_epoch == 65


@pytest.mark.parametrize("content, message", [
    ({"format": 2, "init": None}, "run record format 2, this engine reads format 1"),
    ([], "run record format 'list'"),
    ({"format": 1, "init": {"file": "/x.pt", "epoch": "65", "sha256": "", "heads": "new"}}, "its init is"),
    ({"format": 1, "init": {"file": "/x.pt", "epoch": 65, "sha256": "", "heads": "auto"}}, "heads \\(keep or new\\)"),
])
def test_a_record_that_is_not_one_is_named_with_the_fix(tmp_path, content, message):
    files = RunDir(tmp_path)
    files.run_record.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"{files.run_record}: .*{message}.*train --resume` writes it again"):
        read_run_record(files)


def test_the_old_init_facts_leave_the_config_and_become_the_record():
    old = {"init": {"source": SOURCE.file, "heads": "new", "source_epoch": 65, "source_sha256": SOURCE.sha256},
           "optim": {"epochs": 3}}
    settings, init = split_produced(old)
    assert settings == {"init": {"source": SOURCE.file, "heads": "new"}, "optim": {"epochs": 3}}
    assert old_init_source(init) == SOURCE
    scratch = {"init": {"source": "", "heads": "auto", "source_epoch": -1, "source_sha256": ""}}
    settings, init = split_produced(scratch)
    assert settings == {"init": {"source": "", "heads": "auto"}} and old_init_source(init) is None
    current = {"init": {"source": "", "heads": "auto"}}
    assert split_produced(current) == (current, {})
