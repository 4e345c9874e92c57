"""Nothing overwritten, nothing half-written (engine/outputs.py), through the CLI: every writer
refuses a file or folder it did not write, an input, and a fuller report, with one `error:` line
naming the path, exit 1 or 2, no traceback, and every file that was there byte-identical; one
process writes a run directory or a study folder at a time (an OS lock that dies with its holder)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from engine.outputs import FolderLock, OutputRefused, claim_folder, publish_folder

pytestmark = pytest.mark.usefixtures("torch_single_thread")

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
REPO = Path(__file__).resolve().parent.parent

TINY = ["--primary", "shapes:primary?n=64&size=16", "--test", "shapes:primary?n=32&size=16", "--model", "wrn-10-1",
        "--device", "cpu", "--method", "at", "--aux-mode", "none", "--set", "data.batch_size=32",
        "--set", "attack.steps=1", "--set", "eval.n=32", "--set", "eval.steps=1"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (hidden ones too): what a refused command must not change."""
    files = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def refused(result, *named: object, code: int = 1) -> str:
    """The result is one `error:` line naming every `named` path, exit `code`, no traceback."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out and not isinstance(result.exception, AssertionError), out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    for name in named:
        assert str(name) in lines[0], (name, out)
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny trained run, its test set as a .beton, and a second run: built once for the module."""
    root = tmp_path_factory.mktemp("outputs")
    test = root / "test.beton"
    assert invoke("prepare", "shapes", "primary", test, "--n", "32", "--size", "16").exit_code == 0
    for name in ("run", "run2"):
        result = invoke("train", *TINY, "--epochs", "1", "--out", root / name)
        assert result.exit_code == 0, result.output
    return root


# -- eval -------------------------------------------------------------------------------------

def test_eval_never_writes_over_an_input_or_a_file_it_did_not_write(world, tmp_path):
    run, test = world / "run", world / "test.beton"
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}\n')
    for target in (test, run / "config.toml", run / "model.safetensors", mine):
        before = snapshot(run, test, tmp_path)
        result = invoke("eval", run, "--test", test, "--attacks", "clean", "--device", "cpu", "--out", target)
        line = refused(result, target)
        assert ("input" in line) if target == test else ("did not write" in line)
        assert snapshot(run, test, tmp_path) == before


def test_a_quick_eval_never_silently_replaces_a_fuller_one(world, tmp_path):
    run, test, report = world / "run", world / "test.beton", tmp_path / "eval.json"
    full = invoke("eval", run, "--test", test, "--attacks", "clean,pgd1", "--n", "16", "--device", "cpu",
                  "--out", report)
    assert full.exit_code == 0, full.output
    before = snapshot(tmp_path)
    quick = invoke("eval", run, "--test", test, "--attacks", "clean", "--n", "8", "--device", "cpu", "--out", report)
    line = refused(quick, report)
    assert "fuller" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before
    # The same measurement again covers the earlier one: eval's own report is replaced.
    again = invoke("eval", run, "--test", test, "--attacks", "clean,pgd1", "--n", "16", "--device", "cpu",
                   "--out", report)
    assert again.exit_code == 0, again.output
    robust_only = invoke("eval", run, "--test", test, "--attacks", "pgd1", "--n", "16", "--device", "cpu",
                         "--out", report)  # clean accuracy comes with every evaluation
    assert robust_only.exit_code == 0, robust_only.output
    forced = invoke("eval", run, "--test", test, "--attacks", "clean", "--n", "8", "--device", "cpu",
                    "--out", report, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert json.loads(report.read_text())["n"] == 8
    # Edited by hand after eval wrote it: no longer eval's to replace, even with --overwrite.
    report.write_text(report.read_text().replace('"n": 8', '"n": 9'))
    before = snapshot(tmp_path)
    edited = invoke("eval", run, "--test", test, "--attacks", "clean", "--device", "cpu", "--out", report, "--overwrite")
    assert "changed since" in refused(edited, report)
    assert snapshot(tmp_path) == before


# -- .beton writers ----------------------------------------------------------------------------

def test_prepare_replaces_only_its_own_beton_and_only_with_overwrite(tmp_path):
    out = tmp_path / "p.beton"
    args = ("prepare", "shapes", "primary", out, "--n", "16", "--size", "16")
    assert invoke(*args).exit_code == 0
    before = snapshot(tmp_path)
    assert "--overwrite" in refused(invoke(*args), out)
    assert snapshot(tmp_path) == before
    assert invoke(*args, "--seed", "1", "--overwrite").exit_code == 0
    assert snapshot(tmp_path)[str(out)] != before[str(out)]
    # An input is never the output, --overwrite or not.
    before = snapshot(tmp_path)
    assert "input" in refused(invoke("prepare", "concat", out, out, "--overwrite"), out)
    assert snapshot(tmp_path) == before
    # A user's file of that name (no record) is never replaced.
    mine = tmp_path / "mine.beton"
    mine.write_bytes(b"not a beton of prepare's")
    before = snapshot(tmp_path)
    assert "did not write" in refused(invoke("prepare", "shapes", "primary", mine, "--n", "16", "--overwrite"), mine)
    assert snapshot(tmp_path) == before


def test_robustify_and_pseudo_label_never_write_over_their_input(world, tmp_path):
    data = tmp_path / "data.beton"
    assert invoke("prepare", "shapes", "primary", data, "--n", "16", "--size", "16").exit_code == 0
    before = snapshot(tmp_path)
    result = invoke("robustify", world / "run", data, data, "--overwrite", "--steps", "1", "--device", "cpu")
    assert "input" in refused(result, data)
    result = invoke("pseudo-label", world / "run", data, data, "--all", "--overwrite", "--device", "cpu")
    assert "input" in refused(result, data)
    mine = tmp_path / "mine.beton"
    mine.write_bytes(b"mine")
    before = snapshot(tmp_path)
    result = invoke("pseudo-label", world / "run", data, mine, "--all", "--overwrite", "--device", "cpu")
    assert "did not write" in refused(result, mine)
    assert snapshot(tmp_path) == before


# -- folders -----------------------------------------------------------------------------------

def test_export_never_replaces_another_runs_model(world, tmp_path):
    run, other = world / "run", world / "run2"
    before = snapshot(other)
    result = invoke("export", run, "--out", other, "--overwrite")
    assert "did not write" in refused(result, other)
    assert snapshot(other) == before
    out = tmp_path / "export"
    assert invoke("export", run, "--out", out).exit_code == 0
    first = snapshot(out)
    assert "--overwrite" in refused(invoke("export", run, "--out", out), out)
    assert snapshot(out) == first
    assert invoke("export", other, "--out", out, "--overwrite").exit_code == 0
    assert set(snapshot(out)) == set(first) and not list(tmp_path.glob(".export.*"))  # swapped whole, no temporary


def test_analyze_and_theory_never_replace_a_users_report(world, tmp_path):
    pytest.importorskip("matplotlib")
    for args, name in ((("analyze", world / "run", "--no-fig4"), "analysis.md"),
                       (("theory", "gaussian", "--d", "4", "--samples", "200", "--steps", "5"), "gaussian.md")):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text("my own notes\n")
        before = snapshot(folder)
        assert "did not write" in refused(invoke(*args, "--out", folder), folder)
        assert snapshot(folder) == before
        # Its own earlier output is redrawn whole.
        fresh = tmp_path / f"{folder.name}-own"
        assert invoke(*args, "--out", fresh).exit_code == 0
        assert invoke(*args, "--out", fresh).exit_code == 0
        assert (fresh / name).is_file() and not list(tmp_path.glob(f".{fresh.name}.*"))
    # A run directory is never an analysis folder.
    before = snapshot(world / "run")
    refused(invoke("analyze", world / "run", "--no-fig4", "--out", world / "run"), world / "run")
    assert snapshot(world / "run") == before


def test_study_never_replaces_a_users_study_md(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.md").write_text("my table\n")
    before = snapshot(out)
    result = invoke("study", "amplification", "--scale", "demo", "--out", out, "--seeds", "0")
    assert "did not write" in refused(result, out / "study.md")
    assert snapshot(out) == before and not (out / "runs").exists()


def test_demo_refuses_a_folder_whose_demo_json_it_did_not_write(tmp_path):
    (tmp_path / "demo.json").write_text("{}\n")
    (tmp_path / "at").mkdir()
    (tmp_path / "at" / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    line = refused(invoke("demo", "--out", tmp_path, "--epochs", "1"), tmp_path / "demo.json")
    assert "no record says biamat-engine wrote it" in line and "replaces only its own" in line
    assert snapshot(tmp_path) == before


def test_bench_refuses_a_file_it_did_not_write_before_timing(tmp_path):
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": true}\n')
    before = snapshot(tmp_path)
    started = time.perf_counter()
    result = invoke("bench", "kernels", "--device", "cpu", "--repeats", "2", "--out", mine)
    assert "did not write" in refused(result, mine)
    assert snapshot(tmp_path) == before and time.perf_counter() - started < 30


def test_a_failed_folder_publish_keeps_the_old_folder_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "report"
    publish_folder(out, "analyze", lambda d: (d / "a.md").write_text("old\n"))
    before = snapshot(out)

    def half_then_fail(folder: Path) -> None:
        (folder / "a.md").write_text("new\n")
        raise OSError(28, "No space left on device", str(folder / "b.png"))

    with pytest.raises(OSError, match="No space"):
        publish_folder(out, "analyze", half_then_fail)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    # A killed writer's temporary (its pid gone) is removed by the next publish.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".report.{dead.stdout.strip()}-x.tmp").mkdir()
    claim_folder(out, "analyze", overwrite=True)
    publish_folder(out, "analyze", lambda d: (d / "a.md").write_text("new\n"))
    assert (out / "a.md").read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with pytest.raises(OutputRefused, match="earlier output of `biamat-engine analyze`"):
        claim_folder(out, "analyze", overwrite=False)


# -- runs: the first checkpoint, and one writer per folder -------------------------------------

def test_a_run_stopped_before_its_first_checkpoint_does_not_refuse_the_retry(tmp_path):
    out = tmp_path / "run"
    failed = invoke("train", *TINY, "--epochs", "1", "--set", "optim.lr=1e30", "--out", out)
    assert failed.exit_code == 1 and "nothing to resume" in failed.output, failed.output
    assert not out.exists()  # the folder it made is gone with its config.toml
    retried = invoke("train", *TINY, "--epochs", "1", "--out", out)
    assert retried.exit_code == 0, retried.output


def _wait_for_lock(folder: Path, pid: int, timeout: float = 120) -> None:
    lock = folder / ".biamat.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.is_file() and lock.read_text().strip() == str(pid):
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} never locked {folder}")


def test_a_second_train_on_a_run_being_written_fails_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--epochs", "1", "--out", out).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "cli.app", "train", "--out", str(out), "--resume", "--epochs", "500"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_lock(out, first.pid)
        for extra in (["--resume", "--epochs", "600"], [*TINY, "--epochs", "1", "--overwrite"]):
            line = refused(invoke("train", "--out", out, *extra), out, f"process {first.pid}")
            assert "in use" in line
        assert first.poll() is None  # the holder runs on, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The OS dropped the killed holder's lock: a new run takes the folder at once.
    result = invoke("train", *TINY, "--epochs", "1", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output


def test_a_second_study_on_a_locked_folder_fails_naming_the_holder(tmp_path):
    out = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from engine.outputs import FolderLock; "
                               "lock = FolderLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
                               str(out)], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        result = invoke("study", "amplification", "--scale", "demo", "--out", out, "--seeds", "0")
        refused(result, out, f"process {holder.pid}")
        assert snapshot(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with FolderLock(out):  # free again once its holder is gone
        pass
