"""The one resolution of a requested config into the config a run records in config.toml.

The trainer (a new run and `train --resume`) and the studies' "finished, or made under other
settings?" check all go through here, so a study never predicts what the trainer will record by
copying its logic: when they disagree, one of them is wrong for everybody.

    resolve_config   defaults resolved at start (the warm-up where no selection runs, data paths
                     and init.source made absolute)
    continue_run     the same against a run's recorded config, plus what a resume may change
                     (engine/resume.py): the config the run continues under and its changes

config.toml records what was asked, so a requested config and a recorded one compare as they
are: what the trainer found when it started (the init source's file, epoch and sha256, the
heads `auto` became) is in run.json (engine/run_record.py), never in the config. Runtime
fields (device, precision, compile, kernels) are resolved from the machine by the trainer
(engine/runtime.py); a resume may change them, so they never decide whether a run is the same
one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.config import TrainConfig, resolve_warmup
from engine.resume import DEFAULT_REMEDY, changes_on_resume


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` as a run records it, but for the runtime fields."""
    from engine.data import with_absolute_paths

    cfg = resolve_warmup(cfg)
    # Absolute, as the data paths: a resume or a study from another folder names the same source.
    source = str(Path(cfg.init.source).resolve()) if cfg.init.source else ""
    return dataclasses.replace(cfg, data=with_absolute_paths(cfg.data),
                               init=dataclasses.replace(cfg.init, source=source))


def continue_run(requested: TrainConfig, recorded: dict, where: str,
                 remedy: str = DEFAULT_REMEDY) -> tuple[TrainConfig, dict[str, list]]:
    """The config a run recorded as `recorded` continues under when `requested`, and
    {key: [recorded, requested]} for every setting that differs; a ConfigError naming `where`,
    every key a resume may not change and `remedy` (engine/resume.py) when one differs."""
    cfg = resolve_config(requested)
    return cfg, changes_on_resume(recorded, cfg.to_dict(), where, remedy)
