"""The one resolution of a requested config into the config a run records in config.toml.

The trainer (a new run and `train --resume`) and the studies' "finished, or made under other
settings?" check all go through here, so a study never predicts what the trainer will record by
copying its logic: when they disagree, one of them is wrong for everybody.

    resolve_config   defaults resolved at start (the warm-up where no selection runs, data paths
                     made absolute), and, against a recorded run, the init source as that run
                     recorded it when it names the same source
    continue_run     the same against a run's recorded config, plus what a resume may change
                     (engine/resume.py): the config the run continues under and its changes

Runtime fields (device, precision, compile, kernels) are resolved from the machine by the
trainer (engine/runtime.py); a resume may change them, so they never decide whether a run is
the same one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.config import TrainConfig, resolve_warmup
from engine.resume import DEFAULT_REMEDY, changes_on_resume


def resolve_config(cfg: TrainConfig, recorded: dict | None = None) -> TrainConfig:
    """`cfg` as a run records it, but for the runtime fields. `recorded` (the nested config a
    run's config.toml or checkpoint holds) makes a source given as a run directory compare
    equal to the file it recorded: a fine-tuning records its source as that run's best.pt with
    its epoch and sha256, and the heads `auto` resolved to."""
    from engine.data import with_absolute_paths

    cfg = resolve_warmup(cfg)
    cfg = dataclasses.replace(cfg, data=with_absolute_paths(cfg.data))
    if recorded is not None:
        cfg = dataclasses.replace(cfg, init=_recorded_init(cfg, recorded.get("init") or {}))
    return cfg


def _recorded_init(cfg: TrainConfig, saved: dict):
    """cfg.init with the values the run recorded when it started from the very source cfg names;
    cfg.init as it is for any other source (which then shows as a change)."""
    from engine.init_from import source_file

    init = cfg.init
    if not init.source or not Path(init.source).exists() or \
            str(source_file(init.source).resolve()) != saved.get("source"):
        return init
    return dataclasses.replace(init, source=saved["source"], source_epoch=saved.get("source_epoch", init.source_epoch),
                               source_sha256=init.source_sha256 or saved.get("source_sha256", ""),
                               heads=saved.get("heads", init.heads) if init.heads == "auto" else init.heads)


def continue_run(requested: TrainConfig, recorded: dict, where: str,
                 remedy: str = DEFAULT_REMEDY) -> tuple[TrainConfig, dict[str, list]]:
    """The config a run recorded as `recorded` continues under when `requested`, and
    {key: [recorded, requested]} for every setting that differs; a ConfigError naming `where`,
    every key a resume may not change and `remedy` (engine/resume.py) when one differs."""
    cfg = resolve_config(requested, recorded)
    return cfg, changes_on_resume(recorded, cfg.to_dict(), where, remedy)
