"""`biamat-engine train`: a preset or TOML file, flags and --set overrides -> a run directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from cli.common import TrainProgress, print_epoch_table, setup_logging
from cli.console import console
from cli.errors import UsageError
from cli.options import devices

EPILOG = """[bold]Examples[/]

  biamat-engine train --preset cifar10-at-biamat-imagenet --out runs/c10-at-imnet

  biamat-engine train --primary data/cifar10-train.beton --aux data/imagenet32-train.beton \\
      --test data/cifar10-test.beton --method trades --aux-mode biamat --alpha 0.5 --pi 0.5 \\
      --model wrn-34-10 --epochs 110 --set optim.milestones=100,105 --out runs/c10-trades

  biamat-engine train --out runs/c10-at-imnet --resume

  biamat-engine train --preset cifar100-at-pretrain --out runs/cifar100-at-pretrain
  biamat-engine train --preset cifar10-at-finetune-cifar100 --init-from runs/cifar100-at-pretrain \
      --out runs/c10-at-ft-c100
"""


def flag_overrides(**flags) -> list[str]:
    """The dedicated flags (by parameter name; None: not given) as `section.key=value`
    overrides; which key each option sets is said by its field (engine.config.setting)."""
    from engine.config import flag_keys

    keys = flag_keys()
    return [f"{keys['--' + name.replace('_', '-')]}={value}" for name, value in flags.items() if value is not None]


def build_config(preset, config_file, overrides, aux, resume_dir):
    """The run's config: its own config.toml on --resume, else preset or file; then the flags."""
    from engine.config import load_config
    from engine.run_dir import read_config

    if resume_dir is not None:
        return read_config(resume_dir, overrides, aux=list(aux) or None)
    return load_config(preset, config_file, overrides, aux=list(aux) or None)


# Help panels, in the order a reader fills in a run: where its settings come from, its data, the
# method, the network and schedule, then how and where this invocation runs.
CONFIG, DATA, METHOD, MODEL, RUN = "Configuration", "Data", "Method", "Model and optimisation", "Run"


def train_command(
    *,  # keyword-only, so that the required --out can sit in the "Run" panel, after the defaults
    preset: Annotated[Optional[str], typer.Option(
        help="A named preset (paper Table 2 rows, `demo`); see `biamat-engine info`.", rich_help_panel=CONFIG)] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="A TOML file with the same sections as config.toml.", rich_help_panel=CONFIG)] = None,
    set_: Annotated[List[str], typer.Option(
        "--set", help="Override any setting: section.key=value (repeatable).", rich_help_panel=CONFIG)] = [],
    primary: Annotated[Optional[str], typer.Option(
        help="Primary training data (.beton, .npz or shapes:primary).", rich_help_panel=DATA)] = None,
    aux: Annotated[List[str], typer.Option(
        "--aux", help="Auxiliary dataset (repeatable; one head each).", rich_help_panel=DATA)] = [],
    test: Annotated[Optional[str], typer.Option(
        help="Held-out data for per-epoch model selection.", rich_help_panel=DATA)] = None,
    loader: Annotated[Optional[str], typer.Option(help="resident | ffcv | dali", rich_help_panel=DATA)] = None,
    method: Annotated[Optional[str], typer.Option(help="at | trades | standard", rich_help_panel=METHOD)] = None,
    aux_mode: Annotated[Optional[str], typer.Option(
        help="biamat | labels | uniform | none | pseudo | oracle", rich_help_panel=METHOD)] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Auxiliary loss weight.", rich_help_panel=METHOD)] = None,
    pi: Annotated[Optional[float], typer.Option(
        help="Threshold factor: omega = pi * mean confidence.", rich_help_panel=METHOD)] = None,
    model: Annotated[Optional[str], typer.Option(help="Architecture, e.g. wrn-28-10.", rich_help_panel=MODEL)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.", rich_help_panel=MODEL)] = None,
    init_from: Annotated[Optional[str], typer.Option(
        help="Start from a pre-trained run's weights: RUN_DIR (its best.pt), a .pt or a model.safetensors.",
        rich_help_panel=MODEL)] = None,
    init_heads: Annotated[Optional[str], typer.Option(
        help="With --init-from: keep the source's primary head or start a new one (default: keep when the "
             "class counts match).", rich_help_panel=MODEL)] = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory (config.toml, metrics.jsonl, checkpoints, model).",
                                      rich_help_panel=RUN)],
    device: Annotated[Optional[str], typer.Option(callback=devices("auto", "cpu", "cuda", "cuda:N"),
                                                  help="auto | cpu | cuda | cuda:N", rich_help_panel=RUN)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of everything random.", rich_help_panel=RUN)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue RUN_DIR from its last.pt.", rich_help_panel=RUN)] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a finished or stopped run in RUN_DIR.", rich_help_panel=RUN)] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log progress to stderr.", rich_help_panel=RUN)] = False,
) -> None:
    """Train AT or TRADES, with or without BiaMAT auxiliary data, into a run directory."""
    if preset and config:
        raise UsageError("--preset or --config, not both: start from one and change settings with --set")
    if resume and (preset or config):
        raise UsageError("--resume continues the run's own config.toml: drop --preset/--config")
    if resume and (init_from or init_heads):
        raise UsageError("--resume continues the run's own checkpoint (run.json records its source): "
                         "drop --init-from/--init-heads")
    if init_heads and not init_from and not resume:
        raise UsageError("--init-heads says which head to take from --init-from's source: give --init-from too "
                         "(a --config that names init.source takes --set init.heads=... instead)")
    if resume and overwrite:
        raise UsageError("continue the run in RUN_DIR (--resume) or replace it (--overwrite), not both")
    setup_logging(verbose)
    from engine.distributed import World, init_from_env
    from engine.run_dir import RunDir
    from engine.trainer import train

    files = RunDir(out)
    overrides = flag_overrides(primary=primary, test=test, method=method, aux_mode=aux_mode, alpha=alpha,
                               pi=pi, epochs=epochs, model=model, loader=loader, device=device,
                               seed=seed, init_from=init_from, init_heads=init_heads)
    overrides += list(set_)
    if resume and not files.holds_run():
        raise FileNotFoundError(f"--resume: {files.last} does not exist; start the run without --resume")
    cfg = build_config(preset, config, overrides, aux, out if resume else None)
    init_from_env(cfg.runtime.device)  # a no-op unless launched by torchrun
    main = World.current().is_main  # under torchrun rank 0 alone shows progress and the table
    with TrainProgress(cfg.optim.epochs) if main else contextlib.nullcontext() as progress:
        records = train(cfg, out, resume=resume, overwrite=overwrite, on_step=progress)
    if not main:
        return
    print_epoch_table(records)
    console.print(f"run directory: [bold]{out}[/] (best model: {files.weights})")
