"""What a run learned when it started, beside what it was asked: RUN_DIR/run.json.

config.toml holds the run's settings: what a user asked for, with the defaults the engine
resolves once (the warm-up where no selection runs, data and init paths made absolute, and the
runtime fields from the device, which stay there because a resume continues with them and may
change them). A setting is something a user may give. What the trainer finds out by reading
something outside the config is not a setting, and is recorded here instead:

    init   the source a fine-tune started from, as read (engine/init_from.py): the file (a run
           directory's best.pt), the epochs it had trained, its sha256, and the primary head
           kept or new (what `init.heads = auto` resolved to); null for a run from scratch

run.json is written at the start of a run, before config.toml, and again whenever a fact
becomes known later (a resumed run whose run.json is missing, as in a run from before it
existed, writes it from its checkpoint). Every checkpoint carries the same record beside its
config, so `train --resume` continues with the facts of the state it loads (the schedule of
`optim.schedule_offset = "global-step"` goes on from init.epoch); the export reads run.json.
Nothing reads these facts from config.toml.

Not to be confused with engine/outputs.py's `.biamat.json` records, which say which command
wrote a file (ownership); this file says what the run found when it started. The fingerprint of
the data, also taken at start, has its own file and owner (data.json, engine/data_fingerprint.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from engine.config import split_produced
from engine.run_dir import RunDir, read_json, write_json
from kernels.errors import InputError
from loaders.json_values import whole_number

FORMAT = 1


@dataclass(frozen=True)
class InitSource:
    """The weights a fine-tune started from, as the trainer read them."""

    file: str
    """The file read: a run directory's best.pt, a .pt checkpoint or a model.safetensors (absolute)."""
    epoch: int
    """Epochs the source had trained when it was written; -1 when its card does not say."""
    sha256: str
    heads: str
    """`keep` or `new`: the primary head the run started with (init.heads, with `auto` resolved)."""


@dataclass(frozen=True)
class RunRecord:
    init: InitSource | None = None

    @property
    def source_epoch(self) -> int:
        """The source's epoch, -1 without a source (or when the source did not say)."""
        return self.init.epoch if self.init is not None else -1

    def to_dict(self) -> dict:
        return {"format": FORMAT, "init": asdict(self.init) if self.init is not None else None}

    @classmethod
    def from_dict(cls, data: object, where: str | Path, fix: str) -> "RunRecord":
        """The record `to_dict` wrote; anything else is an InputError naming `where` and `fix`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{where}: run record format {found!r}, this engine reads format {FORMAT}; {fix}")
        init = data.get("init")
        if init is None:
            return cls()
        if not (isinstance(init, dict) and set(init) == {"file", "epoch", "sha256", "heads"}
                and isinstance(init["file"], str) and whole_number(init["epoch"]) and isinstance(init["sha256"], str)
                and init["heads"] in ("keep", "new")):
            raise InputError(f"{where}: its init is {init!r}, expected file, epoch, sha256 and heads "
                             f"(keep or new); {fix}")
        return cls(InitSource(**init))


def write_run_record(files: RunDir, record: RunRecord) -> None:
    """run.json, written atomically (a crash leaves the previous one whole)."""
    write_json(files.run_record, record.to_dict())


def read_run_record(files: RunDir) -> RunRecord | None:
    """The run's run.json; None when the run has none yet. A file this engine cannot read is a
    ValueError naming it and what to do."""
    path = files.run_record
    if not path.exists():
        return None
    fix = "was it edited? Delete it, and `train --resume` writes it again from last.pt"
    return RunRecord.from_dict(read_json(path), path, fix)


def checkpoint_record(state: dict, path: str | Path) -> RunRecord:
    """The record a checkpoint carries (`run_record`, beside the config it was written under):
    what a resume continues with, whatever became of run.json."""
    if "run_record" not in state:  # written before run.json: the facts sit in its config
        return RunRecord(init=old_init_source(split_produced(state["config"])[1]))
    return RunRecord.from_dict(state["run_record"], f"{path} (its run_record)",
                               "was the checkpoint changed outside biamat-engine? Start the run again (--overwrite)")


def old_init_source(init: dict) -> InitSource | None:
    """The source of a run written before run.json, from the [init] section its config recorded
    (engine.config.split_produced): init.source was the file read, init.heads resolved, and
    source_sha256 filled in when a source was read; None for a run from scratch."""
    if not init.get("source_sha256"):
        return None
    return InitSource(file=str(init.get("source", "")), epoch=int(init.get("source_epoch", -1)),
                      sha256=str(init["source_sha256"]), heads=str(init.get("heads", "new")))
