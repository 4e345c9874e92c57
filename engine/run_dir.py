"""The run directory: the names of its files, the atomic writes every one of them goes through,
its JSON and JSON-lines writers, and its configuration read back through the config classes.

    RUN_DIR/config.toml        the fully resolved configuration
    RUN_DIR/run.json           what the run found at start that is not a setting: the init source
                               as read (engine/run_record.py)
    RUN_DIR/metrics.jsonl      one JSON object per epoch
    RUN_DIR/selection.jsonl    per epoch and auxiliary dataset: per-class seen and high counts
    RUN_DIR/resumes.jsonl      each resume that changed a setting (which, from what to what)
    RUN_DIR/data.json          the fingerprint of the data files the run started on (checked by --resume)
    RUN_DIR/last.pt, best.pt   full training state (torch.load(weights_only=True))
    RUN_DIR/model.safetensors  the best primary classifier, and model.json, its card
    RUN_DIR/eval.json          the report of `biamat-engine eval`
    RUN_DIR/tensorboard/       metrics.jsonl's scalars as TensorBoard event files (runtime.tensorboard)

A model folder (model.safetensors + model.json) has the same two names wherever it is written:
in a run directory or in an export. Nothing else in the engine spells these names.

Bookkeeping of engine/outputs.py, in any output folder: `.biamat.lock` (the lock of the one
process writing it), `.biamat.json` (the record of a folder output), `.NAME.biamat.json` (the
record of the file output NAME beside it).

`biamat-engine demo --out DIR` writes a demo folder (`DemoDir`): DIR/demo.json (settings and
results; written first, with its record, so it marks the folder as the demo's own), DIR/data/ (the generated
.beton files) and one run directory per arm (DIR/at/, DIR/biamat/).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from kernels.errors import InputError

if TYPE_CHECKING:
    from engine.config import Overrides, TrainConfig


LOCK_NAME = ".biamat.lock"
FOLDER_RECORD = ".biamat.json"
BOOKKEEPING = frozenset({LOCK_NAME, FOLDER_RECORD})
"""Names that never make a folder someone's data: an empty folder holding only these is empty."""


def output_record(path: str | Path) -> Path:
    """The record beside a file output: which command wrote it and its sha256 (engine/outputs.py)."""
    path = Path(path)
    return path.with_name(f".{path.name}.biamat.json")


@dataclass(frozen=True)
class RunDir:
    """Where each file of a run lives. `RunDir.of(path)` accepts the folder or any file in it."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        return cls(path if path.is_dir() else path.parent)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def run_record(self) -> Path:
        """What the run found at start that is not a setting (engine/run_record.py); not the
        ownership records of engine/outputs.py."""
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def selection(self) -> Path:
        return self.root / "selection.jsonl"

    @property
    def resumes(self) -> Path:
        return self.root / "resumes.jsonl"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def card(self) -> Path:
        return self.root / "model.json"

    @property
    def eval_report(self) -> Path:
        return self.root / "eval.json"

    @property
    def data_fingerprint(self) -> Path:
        """The data the run started on, fingerprinted (engine/data_fingerprint.py); read by --resume."""
        return self.root / "data.json"

    @property
    def tensorboard(self) -> Path:
        """A folder: TensorBoard's event files, written when runtime.tensorboard is on."""
        return self.root / "tensorboard"

    def run_files(self) -> list[Path]:
        """The files one training run writes or is evaluated into: what a replaced run clears
        (config.toml is excluded: the new run writes its own before anything else)."""
        return [self.run_record, self.metrics, self.selection, self.resumes, self.last, self.best, self.weights, self.card,
                self.eval_report, output_record(self.eval_report), self.data_fingerprint]

    def holds_run(self) -> bool:
        return self.last.exists()

    def read_config(self) -> "TrainConfig":
        return read_config(self.root)


@dataclass(frozen=True)
class DemoDir:
    """Where the files of `biamat-engine demo --out DIR` live."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def summary(self) -> Path:
        return self.root / "demo.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def arm(self, name: str) -> RunDir:
        return RunDir(self.root / name)

    def names(self, arms: tuple[str, ...]) -> set[str]:
        """Everything a demo writes in its folder (engine.outputs.claim_demo checks against it)."""
        return {self.summary.name, output_record(self.summary).name, self.data.name, *arms, *BOOKKEEPING}


def check_writable(path: str | Path) -> None:
    """Fails now, naming `path`, if a file cannot be written there later (a missing parent that
    cannot be made, a read-only folder, a folder in the file's place): before hours of work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory (expected a file path)", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    os.close(fd)
    os.unlink(probe)


def refuse_to_replace(folder: str | Path, fix: str) -> None:
    """A command writes into a folder that is absent or empty, never over what it did not write:
    anything else is a FileExistsError naming what is there and `fix`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: {fix}")
    entries = sorted(p.name for p in folder.iterdir() if p.name not in BOOKKEEPING) if folder.is_dir() else []
    if entries:
        shown = ", ".join(entries[:6]) + (f" and {len(entries) - 6} more" if len(entries) > 6 else "")
        raise FileExistsError(f"{folder} already holds {shown}: {fix}")


def read_config(run_dir: str | Path, overrides: "Overrides | Iterable[str]" = (),
                aux: list[str] | None = None) -> "TrainConfig":
    """The run's `config.toml`, parsed and validated by the config classes, with `overrides` and
    `aux` laid over it as `load_config` does (what `train --resume` continues under)."""
    from engine.config import config_from_tree, read_toml, split_produced

    path = RunDir.of(run_dir).config
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a run directory of biamat-engine?")
    tree, _ = split_produced(read_toml(path))  # a resume takes the facts from its checkpoint
    return config_from_tree(tree, overrides, aux)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Calls `write(tmp_path)` on a fresh temporary file beside `path`, then renames it over
    `path`: a crash, a full disk or Ctrl-C mid-write leaves the previous file whole and no
    temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp's 0600 (kept by writers that recreate the file) would make the result private.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise_naming(err, path)
        raise


def raise_naming(err: OSError, path: str | Path) -> None:
    """Re-raises `err` naming `path` when it names no file (a write that fails mid-file, as on a
    full disk, says only "No space left on device"); returns when it names one already."""
    if err.filename is None and err.errno is not None:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, data: Any) -> None:
    """Indented JSON, written atomically (reports, model cards, benchmark results)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}): was it cut short? Write it again") from None
    except UnicodeDecodeError:  # a binary file where JSON belongs: the codec's byte position helps nobody
        raise InputError(f"{path} is not a JSON text file (it holds binary data): is it the right file? "
                         "Write it again") from None


class JsonLines:
    """Appends one JSON object per line; `truncate_after` drops lines of epochs a resumed run
    will write again, so a crash between a log line and its checkpoint never duplicates it."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
            except OSError as err:
                raise_naming(err, self.path)
                raise

    def truncate_after(self, epoch: int) -> None:
        if not (self.enabled and self.path.exists()):
            return
        kept = [json.dumps(r) for r in read_json_lines(self.path) if r["epoch"] <= epoch]
        # Atomic: a crash while trimming must not lose the epochs that are kept.
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def read(self) -> list[dict]:
        return read_json_lines(self.path)


def read_json_lines(path: str | Path) -> list[dict]:
    """Every record of a JSON-lines file; [] when it does not exist yet. A torn last line (the
    process died mid-append, so no newline ends it) is dropped: its epoch is written again on
    resume. Any other unreadable line is an InputError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a JSON-lines text file (it holds binary data): is it the right "
                         "file? Remove or replace it") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn by a crash mid-write
            raise InputError(f"{path}, line {number}, is not valid JSON ({err}): the file was edited or "
                             "damaged; fix or remove that line") from None
        if not isinstance(records[-1], dict):
            raise InputError(f"{path}, line {number}, is a JSON {type(records[-1]).__name__}, expected an object "
                             "(one record per line): the file was edited or damaged; fix or remove that line")
    return records
