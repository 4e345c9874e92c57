"""The run directory module: its layout, atomic writes that leave nothing half-written, JSON
(lines) round trips, and the config read back through the config classes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.config import load_config, to_toml
from engine.run_dir import JsonLines, RunDir, atomic_write, read_config, read_json, write_json

REPO = Path(__file__).resolve().parents[1]


def test_layout_names_match_the_documented_run_directory(tmp_path):
    files = RunDir(tmp_path)
    assert [p.name for p in (files.config, files.run_record, files.metrics, files.selection, files.last, files.best,
                             files.weights, files.card, files.eval_report)] == [
        "config.toml", "run.json", "metrics.jsonl", "selection.jsonl", "last.pt", "best.pt", "model.safetensors",
        "model.json", "eval.json"]
    assert files.config not in files.run_files() and files.run_record in files.run_files()
    assert RunDir.of(tmp_path) == files
    (tmp_path / "best.pt").write_bytes(b"")
    assert RunDir.of(tmp_path / "best.pt") == files
    assert not files.holds_run()
    files.last.write_bytes(b"")
    assert files.holds_run()


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"old": 1})

    def fail_midway(tmp: str) -> None:
        Path(tmp).write_text('{"new": ')
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fail_midway)
    assert read_json(target) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_write_survives_ctrl_c(tmp_path):
    target = tmp_path / "metrics.jsonl"

    def interrupted(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_read_json_names_a_truncated_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('{"clean_acc": 0.')
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_json(path)


def test_json_lines_round_trip_and_truncate_after(tmp_path):
    log = JsonLines(tmp_path / "metrics.jsonl")
    for epoch in (1, 2, 3):
        log.write({"epoch": epoch, "loss": 1.0 / epoch})
    log.truncate_after(2)
    assert log.read() == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    silent = JsonLines(tmp_path / "rank1.jsonl", enabled=False)
    silent.write({"epoch": 1})
    assert not silent.path.exists() and silent.read() == []


def test_read_config_round_trips_through_the_config_classes(tmp_path):
    cfg = load_config("demo", overrides=["method.pi=0.4", "attack.eps=4/255"])
    RunDir(tmp_path).config.write_text(to_toml(cfg))
    back = read_config(tmp_path)
    assert back == cfg
    assert RunDir(tmp_path).read_config() == read_config(tmp_path / "last.pt")


def test_read_config_of_a_folder_without_one_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.toml"):
        read_config(tmp_path)


def test_no_other_module_spells_the_run_directory_file_names():
    """The layout has one owner: a name written as a literal elsewhere is a second owner that
    can drift. Docstrings and help texts may mention names; string literals that build paths
    (`/ "last.pt"`, `"eval.json")`) may not."""
    pattern = re.compile(r"""/ ?["'](config\.toml|run\.json|metrics\.jsonl|selection\.jsonl|last\.pt|best\.pt|"""
                         r"""model\.safetensors|model\.json|eval\.json)["']""")
    offenders = []
    for folder in ("engine", "loaders", "kernels", "cli", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "run_dir.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "use engine.run_dir.RunDir instead:\n" + "\n".join(offenders)


def test_every_writer_of_json_reports_is_atomic():
    """Reports, cards and benchmark JSON go through engine.run_dir; a bare `.write_text(json.dumps`
    or a fixed `.tmp` name is the weaker copy this module replaced."""
    weak = re.compile(r"""write_text\(json\.dumps|with_name\(.*\.tmp""")
    offenders = [f"{p.relative_to(REPO)}:{n}" for folder in ("engine", "cli", "benchmarks")
                 for p in (REPO / folder).rglob("*.py") if p.name != "run_dir.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if weak.search(line)]
    assert offenders == []


def test_written_json_is_indented_and_ends_with_a_newline(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    text = (tmp_path / "a" / "b.json").read_text()
    assert text == json.dumps({"x": [1, 2]}, indent=2) + "\n"


def test_a_torn_last_line_is_dropped_and_a_damaged_one_named(tmp_path):
    log = JsonLines(tmp_path / "metrics.jsonl")
    log.write({"epoch": 1})
    log.write({"epoch": 2})
    with log.path.open("a") as f:
        f.write('{"epoch": 3, "lo')  # the process died mid-append
    assert [r["epoch"] for r in log.read()] == [1, 2]
    log.truncate_after(2)
    assert log.path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    log.path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2, is not valid JSON"):
        log.read()
