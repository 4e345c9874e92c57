"""`biamat-engine train`: a preset or TOML file, flags and --set overrides -> a run directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from cli.app import app
from cli.common import TrainProgress, console, print_epoch_table, setup_logging, user_errors

EPILOG = """[bold]Examples[/]

  biamat-engine train --preset cifar10-at-biamat-imagenet --out runs/c10-at-imnet

  biamat-engine train --primary data/cifar10-train.beton --aux data/imagenet32-train.beton \\
      --test data/cifar10-test.beton --method trades --aux-mode biamat --alpha 0.5 --pi 0.5 \\
      --model wrn-34-10 --epochs 110 --set optim.milestones=100,105 --out runs/c10-trades

  biamat-engine train --out runs/c10-at-imnet --resume
"""


def flag_overrides(**flags) -> list[str]:
    """The dedicated flags as `section.key=value` overrides (None means not given)."""
    keys = {
        "primary": "data.primary", "test": "data.test", "loader": "data.loader",
        "method": "method.name", "aux_mode": "method.aux_mode", "alpha": "method.alpha",
        "pi": "method.pi", "epochs": "optim.epochs", "model": "model.name",
        "device": "runtime.device", "seed": "runtime.seed",
    }
    return [f"{keys[name]}={value}" for name, value in flags.items() if value is not None]


def build_config(preset, config_file, overrides, aux, resume_dir):
    """The run's config: its own config.toml on --resume, else preset or file; then the flags."""
    from engine.config import ConfigError, load_config
    from engine.run_dir import RunDir

    if resume_dir is not None:
        if preset or config_file:
            raise ConfigError("--resume continues the run's own config.toml: drop --preset/--config")
        config_file = RunDir(resume_dir).config
    return load_config(preset, config_file, overrides, aux=list(aux) or None)


@app.command("train", epilog=EPILOG)
def train_command(
    out: Path = typer.Option(..., "--out", help="Run directory (config.toml, metrics.jsonl, checkpoints, model)."),
    preset: Optional[str] = typer.Option(None, help="A named preset (paper Table 2 rows, `demo`); see `biamat-engine info`."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file with the same sections as config.toml."),
    set_: List[str] = typer.Option([], "--set", help="Override any setting: section.key=value (repeatable)."),
    primary: Optional[str] = typer.Option(None, help="Primary training data (.beton, .npz or shapes:primary)."),
    aux: List[str] = typer.Option([], "--aux", help="Auxiliary dataset (repeatable; one head each)."),
    test: Optional[str] = typer.Option(None, help="Held-out data for per-epoch model selection."),
    method: Optional[str] = typer.Option(None, help="at | trades"),
    aux_mode: Optional[str] = typer.Option(None, help="biamat | labels | uniform | none"),
    alpha: Optional[float] = typer.Option(None, help="Auxiliary loss weight."),
    pi: Optional[float] = typer.Option(None, help="Threshold factor: omega = pi * mean confidence."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs."),
    model: Optional[str] = typer.Option(None, help="Architecture, e.g. wrn-28-10."),
    loader: Optional[str] = typer.Option(None, help="resident | ffcv | dali"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    seed: Optional[int] = typer.Option(None, help="Seed of everything random."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN_DIR from its last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished or stopped run in RUN_DIR."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
) -> None:
    """Train AT or TRADES, with or without BiaMAT auxiliary data, into a run directory."""
    setup_logging(verbose)
    from engine.distributed import World, init_from_env
    from engine.run_dir import RunDir
    from engine.trainer import NonFiniteLossError, train

    files = RunDir(out)
    with user_errors(NonFiniteLossError, FileExistsError):
        overrides = flag_overrides(primary=primary, test=test, method=method, aux_mode=aux_mode, alpha=alpha,
                                   pi=pi, epochs=epochs, model=model, loader=loader, device=device,
                                   seed=seed) + list(set_)
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
