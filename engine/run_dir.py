"""The run directory: the names of its files, the atomic writes every one of them goes through,
its JSON and JSON-lines writers, and its configuration read back through the config classes.

    RUN_DIR/config.toml        the fully resolved configuration
    RUN_DIR/metrics.jsonl      one JSON object per epoch
    RUN_DIR/selection.jsonl    per epoch and auxiliary dataset: per-class seen and high counts
    RUN_DIR/last.pt, best.pt   full training state (torch.load(weights_only=True))
    RUN_DIR/model.safetensors  the best primary classifier, and model.json, its card
    RUN_DIR/eval.json          the report of `biamat-engine eval`

A model folder (model.safetensors + model.json) has the same two names wherever it is written:
in a run directory or in an export. Nothing else in the engine spells these names.

`biamat-engine demo --out DIR` writes a demo folder (`DemoDir`): DIR/demo.json (settings and
results; written first, so it marks the folder as the demo's own), DIR/data/ (the generated
.beton files) and one run directory per arm (DIR/at/, DIR/biamat/).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from engine.config import TrainConfig


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
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def selection(self) -> Path:
        return self.root / "selection.jsonl"

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

    def run_files(self) -> list[Path]:
        """The files one training run writes or is evaluated into: what a replaced run clears
        (config.toml is excluded: the new run writes its own before anything else)."""
        return [self.metrics, self.selection, self.last, self.best, self.weights, self.card, self.eval_report]

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

    def claim(self) -> None:
        """Makes sure the demo may write here: the folder is new, empty, or a demo's own (it
        holds demo.json). Anything else is someone's data, and a demo never replaces it."""
        if self.summary.is_file() or not self.root.exists() or not any(self.root.iterdir()):
            return
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is a file; pick another --out for the demo")
        raise ValueError(f"{self.root} is not empty and holds no {self.summary.name}, so it is not a demo's "
                         f"output; pick another --out (the demo replaces only its own earlier results)")


def read_config(run_dir: str | Path) -> "TrainConfig":
    """The run's `config.toml`, parsed and validated by the config classes."""
    from engine.config import load_config

    path = RunDir.of(run_dir).config
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a run directory of biamat-engine?")
    return load_config(file=path)


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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        raise ValueError(f"{path} is not valid JSON ({err}): was it cut short? Write it again") from None


class JsonLines:
    """Appends one JSON object per line; `truncate_after` drops lines of epochs a resumed run
    will write again, so a crash between a log line and its checkpoint never duplicates it."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def truncate_after(self, epoch: int) -> None:
        if not (self.enabled and self.path.exists()):
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["epoch"] <= epoch]
        # Atomic: a crash while trimming must not lose the epochs that are kept.
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def read(self) -> list[dict]:
        return read_json_lines(self.path)


def read_json_lines(path: str | Path) -> list[dict]:
    """Every record of a JSON-lines file; [] when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
