"""The data a run trains on, fingerprinted when it starts, so that `--resume` refuses data that
changed under the same path (a .beton prepared again, another file copied over it): the
checkpoint's weights, omega and loader position belong to the data they were produced on.

A file's fingerprint is its size, its manifest's sha256 (a .beton's NAME.beton.json) and the
sha256 of a few blocks sampled at fixed offsets: cheap for ImageNet-sized files, and any rewrite
that changes the sample count, the classes or the pixels at those places is caught. Built-in
specs (`shapes:...`) are generated from their spec, which config.toml already holds.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from engine.config import ConfigError, TrainConfig
from engine.run_dir import RunDir, read_json, write_json
from kernels.errors import InputError

log = logging.getLogger(__name__)

BLOCKS = 8
"""Blocks hashed per file: the first, the last and six evenly between."""
BLOCK_BYTES = 1 << 16


def file_fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        span = max(size - BLOCK_BYTES, 0)
        for offset in sorted({span * i // (BLOCKS - 1) for i in range(BLOCKS)}):
            f.seek(offset)
            digest.update(f.read(BLOCK_BYTES))
    manifest = Path(f"{path}.json")
    return {"size": size, "sampled_sha256": digest.hexdigest(),
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None}


def data_files(cfg: TrainConfig) -> list[str]:
    """The dataset specs of `cfg` that name files (primary, auxiliary, test), in that order."""
    specs = [cfg.data.primary, *cfg.data.aux, cfg.data.test]
    return list(dict.fromkeys(s for s in specs if s and not s.startswith("shapes:") and Path(s).is_file()))


def fingerprint(cfg: TrainConfig) -> dict[str, dict]:
    return {spec: file_fingerprint(Path(spec)) for spec in data_files(cfg)}


def record_fingerprint(files: RunDir, cfg: TrainConfig) -> None:
    """Writes the fingerprint of `cfg`'s data into the run directory, at the run's start."""
    write_json(files.data_fingerprint, {"version": 1, "files": fingerprint(cfg)})


def check_fingerprint(files: RunDir, cfg: TrainConfig) -> None:
    """A ConfigError naming the file and what differs when data the run started on changed; a
    run from before fingerprints were recorded resumes with a logged note."""
    if not files.data_fingerprint.exists():
        log.info("%s predates data fingerprints: resuming without checking that the data is the one the run "
                 "started on", files.root)
        return
    recorded = read_json(files.data_fingerprint)
    saved = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(saved, dict):
        raise InputError(f"{files.data_fingerprint} is not a data fingerprint ({{\"files\": {{...}}}}): the file "
                         "was edited or damaged; remove it to resume without the check")
    for spec, before in saved.items():
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--resume: {spec}, which the run started on, is gone; put it back (the run "
                              "trains on it) or start a new run")
        now = file_fingerprint(path)
        differs = [k for k in ("size", "manifest_sha256", "sampled_sha256") if before.get(k) != now[k]]
        if differs:
            what = {"size": "its size", "manifest_sha256": "its manifest", "sampled_sha256": "its content"}
            raise ConfigError(f"--resume: {spec} changed since the run started ({', '.join(what[k] for k in differs)} "
                              "differ): the checkpoint was trained on the data as it was; restore that file, or "
                              "start a new run (another --out, or --overwrite)")
