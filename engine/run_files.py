"""The run directory's JSON-lines logs, written by rank 0 only."""

from __future__ import annotations

import json
from pathlib import Path

from engine.checkpoint import atomic_write_text


class JsonLines:
    """Appends one JSON object per line; `truncate_after` drops lines of epochs a resumed run
    will write again, so a crash between a log line and its checkpoint never duplicates it."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
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
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
