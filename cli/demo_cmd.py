"""`biamat-engine demo`: the whole pipeline on built-in data, in minutes on a laptop CPU.

shapes -> .beton files -> AT+BiaMAT of a small WideResNet -> clean and PGD-20 accuracy, plus
how the confidence selection treated related and unrelated auxiliary classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import TrainProgress, print_epoch_table, setup_logging
from cli.console import console, err_console
from cli.options import devices

EPILOG = """[bold]Examples[/]

  biamat-engine demo                       # runs/demo, on CUDA when there is one

  biamat-engine demo --out /tmp/demo --device cpu --epochs 3
"""


def prepare_shapes(data_dir: Path, primary_n: int, aux_n: int, test_n: int, seed: int) -> dict[str, Path]:
    """Writes the built-in shapes splits as .beton files (skipped when already there)."""
    from loaders.beton import write_beton
    from loaders.sources.shapes import make_shapes

    splits = {
        "primary": ("primary", "train", primary_n),
        "aux": ("aux", "train", aux_n),
        "test": ("primary", "test", test_n),
    }
    paths = {}
    for role, (kind, split, n) in splits.items():
        path = data_dir / f"shapes-{kind}-{split}-{n}.beton"
        if not path.exists():
            write_beton(path, make_shapes(kind, split, n=n, seed=seed), format="shapes", split=split,
                        source=f"shapes:{kind}")
        paths[role] = path
    return paths


def selection_summary(run_dir: Path) -> list[tuple[str, int, int]]:
    """(group, seen, high) over the last routed epoch: related vs unrelated auxiliary classes."""
    from engine.run_dir import RunDir, read_json_lines

    lines = read_json_lines(RunDir(run_dir).selection)
    if not lines:
        return []
    last_epoch = lines[-1]["epoch"]
    groups = {"related to the primary classes": [0, 0], "unrelated (textures, noise)": [0, 0]}
    for rec in (r for r in lines if r["epoch"] == last_epoch and r.get("related")):
        for related, seen, high in zip(rec["related"], rec["seen"], rec["high"]):
            g = groups["related to the primary classes" if related else "unrelated (textures, noise)"]
            g[0] += seen
            g[1] += high
    return [(name, seen, high) for name, (seen, high) in groups.items()]


DATA, RUN = "Data", "Run"


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Run directory to create.",
                                      rich_help_panel=RUN)] = Path("runs/demo"),
    device: Annotated[str, typer.Option(callback=devices("auto", "cpu", "cuda", "cuda:N"),
                                        help="auto | cpu | cuda | cuda:N", rich_help_panel=RUN)] = "auto",
    epochs: Annotated[Optional[int], typer.Option(
        help="Override the demo preset's epochs.", rich_help_panel=RUN)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data and the run.", rich_help_panel=RUN)] = 0,
    train_size: Annotated[int, typer.Option(
        min=16, help="Generated primary and auxiliary training images each.", rich_help_panel=DATA)] = 4000,
    test_size: Annotated[int, typer.Option(
        min=16, help="Generated held-out primary images.", rich_help_panel=DATA)] = 500,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log progress to stderr.", rich_help_panel=RUN)] = False,
) -> None:
    """Generate the built-in shapes data, train AT+BiaMAT on it, evaluate, print the table."""
    setup_logging(verbose)
    from rich.table import Table

    from engine.config import load_config, load_preset
    from engine.evaluation.report import summary_rows
    from engine.evaluation.runner import EvalPlan, run_evaluation
    from engine.run_dir import RunDir, write_json
    from engine.runtime import resolve_device
    from engine.trainer import train

    # The step headings are progress (stderr); the tables are the results (stdout).
    err_console.print("[bold]1/3[/] writing the built-in shapes datasets as .beton files")
    paths = prepare_shapes(out / "data", primary_n=train_size, aux_n=train_size, test_n=test_size, seed=seed)
    overrides = [f"data.primary={paths['primary']}", f"data.test={paths['test']}",
                 f"runtime.device={device}", f"runtime.seed={seed}"]
    preset = load_preset("demo")
    if epochs is not None:
        # Keep the preset's share of warm-up epochs, so routing still runs at the end.
        warmup = preset["method"]["warmup_epochs"] * epochs // preset["optim"]["epochs"]
        overrides += [f"optim.epochs={epochs}", f"method.warmup_epochs={min(warmup, epochs - 1)}"]
    cfg = load_config("demo", overrides=overrides, aux=[str(paths["aux"])])
    err_console.print(f"[bold]2/3[/] training {cfg.model.name} with AT+BiaMAT for {cfg.optim.epochs} epochs "
                      f"(warm-up {cfg.method.warmup_epochs}) into {out}")
    with TrainProgress(cfg.optim.epochs) as progress:
        records = train(cfg, out, overwrite=True, on_step=progress)  # a demo simply runs again
    print_epoch_table(records)

    err_console.print("[bold]3/3[/] evaluating the best model on the held-out shapes (clean, PGD-20)")
    plan = EvalPlan(attacks=("clean", "pgd20"), eps=cfg.attack.eps,  # step: the run's eval.step_size
                    device=str(resolve_device(device)))
    report = run_evaluation(out, str(paths["test"]), plan)
    write_json(RunDir(out).eval_report, report)

    table = Table(title=f"demo: best model on {report['n']} held-out shapes, Linf eps {report['eps']}",
                  show_edge=False)
    for col in ("attack", "accuracy", "correct", "seconds"):
        table.add_column(col, justify="right")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    selection = selection_summary(out)
    if selection:
        sel = Table(title="confidence selection, last epoch: auxiliary samples routed high", show_edge=False)
        for col in ("auxiliary classes", "seen", "high", "high %"):
            sel.add_column(col, justify="right")
        for name, seen, high in selection:
            sel.add_row(name, str(seen), str(high), f"{100 * high / max(seen, 1):.1f}")
        console.print(sel)
    console.print(f"run directory: [bold]{out}[/] (metrics.jsonl, selection.jsonl, eval.json, model.safetensors)")
