"""`biamat-engine demo`: plain AT and AT+BiaMAT side by side on Fashion-MNIST (or the built-in
shapes), in minutes on a CPU. What it runs is studies/demo.py; this command parses the options, shows progress and
prints the table."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import TrainProgress, print_epoch_table, setup_logging
from cli.console import console, err_console
from cli.options import devices
from studies.demo import ARMS, DATASETS  # light: the heavy imports wait inside the functions

EPILOG = """[bold]Examples[/]

  biamat-engine demo                       # runs/demo/{at,biamat}, on CUDA when there is one

  biamat-engine demo --only biamat --out /tmp/demo --device cpu --epochs 3

  biamat-engine demo --data shapes --difficulty 3 --classes 16 --n 640 --seed 1
"""

DATA, RUN = "Data", "Run"


def _data(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in DATASETS:
        raise typer.BadParameter(f"expected one of {' | '.join(DATASETS)}, got {value!r}")
    return value


def _only(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ARMS:
        raise typer.BadParameter(f"expected one of {' | '.join(ARMS)}, got {value!r}")
    return value


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Demo folder: DIR/at and DIR/biamat are run directories, "
                                      "DIR/data the generated data, DIR/demo.json the results.",
                                      rich_help_panel=RUN)] = Path("runs/demo"),
    only: Annotated[Optional[str], typer.Option(
        callback=_only, help="Run one arm: at | biamat.", rich_help_panel=RUN)] = None,
    device: Annotated[str, typer.Option(callback=devices("auto", "cpu", "cuda", "cuda:N"),
                                        help="auto | cpu | cuda | cuda:N", rich_help_panel=RUN)] = "auto",
    epochs: Annotated[Optional[int], typer.Option(
        min=1, help="Override the demo preset's epochs.", rich_help_panel=RUN)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data and the runs.", rich_help_panel=RUN)] = 0,
    data: Annotated[Optional[str], typer.Option(
        callback=_data, help="fashion-mnist (default where Debian's dataset-fashion-mnist is installed) or shapes "
                             "(the built-in synthetic data; the default otherwise, and with any shapes option below).",
        rich_help_panel=DATA)] = None,
    source: Annotated[Optional[Path], typer.Option(
        help="fashion-mnist: the folder of its four IDX files (default: the Debian package's).",
        rich_help_panel=DATA)] = None,
    n: Annotated[Optional[int], typer.Option(
        "--n", "--train-size", min=16, help="shapes: Primary training images (default: the preset's).",
        rich_help_panel=DATA)] = None,
    aux_size: Annotated[Optional[int], typer.Option(
        min=16, help="shapes: Auxiliary training images (default: the preset's).", rich_help_panel=DATA)] = None,
    test_size: Annotated[Optional[int], typer.Option(
        min=16, help="shapes: Held-out primary images (default: the preset's).", rich_help_panel=DATA)] = None,
    difficulty: Annotated[Optional[int], typer.Option(
        min=0, max=3, help="shapes: Shapes difficulty 0..3 (default: the preset's).", rich_help_panel=DATA)] = None,
    classes: Annotated[Optional[int], typer.Option(
        min=2, max=16, help="shapes: Primary shape classes (default: the preset's).", rich_help_panel=DATA)] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log progress to stderr.", rich_help_panel=RUN)] = False,
) -> None:
    """Train plain AT and AT+BiaMAT with one budget, evaluate both, print the table.

    On Fashion-MNIST (where installed) the setting is the fashion-mnist study's, and the table is
    followed by the study's mean and spread over five seeds, so one run can be read against them."""
    setup_logging(verbose)
    from engine.outputs import claim_demo, write_json_output
    from engine.run_dir import DemoDir
    from studies import demo as pipeline

    started = time.perf_counter()
    demo = DemoDir(out)
    claim_demo(demo, tuple(ARMS))
    shapes_options = {"--n": n, "--aux-size": aux_size, "--test-size": test_size, "--difficulty": difficulty,
                      "--classes": classes}
    given = [name for name, value in shapes_options.items() if value is not None]
    data = data or _default_data(given, source)
    if data == "fashion-mnist" and given:
        raise typer.BadParameter(f"{', '.join(given)} apply to --data shapes only", param_hint="--data")
    if data == "shapes":
        chosen = pipeline.shapes_data(demo.data, seed, n=n, aux=aux_size, test=test_size, difficulty=difficulty,
                                      classes=classes)
    else:
        chosen = pipeline.fashion_mnist_data(demo.data, seed, source)
    arms = [only] if only else list(ARMS)
    summary = {"status": "running", "arms": arms, "seed": seed, "dataset": chosen.name, "data": chosen.knobs,
               "epochs_override": epochs, "results": {}}
    write_json_output(demo.summary, "demo", summary)  # first: its record marks the folder as this demo's

    side_by_side = _side_by_side(device, len(arms))
    steps = 2 if side_by_side else 1 + 2 * len(arms)
    err_console.print(f"[bold]1/{steps}[/] writing the {chosen.name} datasets as .beton files into {demo.data}")
    paths = chosen.make(arms)
    configs = {arm: pipeline.arm_config(arm, chosen, paths, device, seed, epochs) for arm in arms}
    roots = {arm: demo.arm(arm).root for arm in arms}
    if side_by_side:
        err_console.print(f"[bold]2/{steps}[/] training and evaluating {' and '.join(ARMS[a] for a in arms)} side by "
                          f"side, one CPU thread each (as the study's runs): {configs[arms[0]].model.name}, "
                          f"{configs[arms[0]].optim.epochs} epochs, into {demo.root}")
        done = pipeline.arms_side_by_side(configs, roots, paths["test"], device, chosen)
        for arm in arms:
            print_epoch_table(done[arm][0])
            summary["results"][arm] = done[arm][1]
        write_json_output(demo.summary, "demo", summary)
    else:
        with pipeline.torch_threads(1) if _on_cpu(device) else contextlib.nullcontext():
            _arms_in_turn(arms, configs, roots, paths, device, chosen, summary, demo, steps)

    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["verdict"] = pipeline.verdict(summary["results"], chosen.name)
    if chosen.name == "fashion-mnist":
        study = pipeline.compare_with_study(summary["results"], pipeline.read_reference(), same_setting=epochs is None)
        summary["study"] = {"lines": study.lines, "within_spread": study.within}
    summary["status"] = "done"
    write_json_output(demo.summary, "demo", summary)
    _print_results(summary, demo, chosen)


def _on_cpu(device: str) -> bool:
    from engine.runtime import resolve_device

    return resolve_device(device).type == "cpu"


def _side_by_side(device: str, arms: int) -> bool:
    """On a CPU with a core for each arm, the arms train at once, one thread each."""
    from loaders.options import available_cores

    return arms > 1 and _on_cpu(device) and available_cores() >= arms


def _default_data(shapes_options: list[str], source: Optional[Path]) -> str:
    """fashion-mnist where its files are there (or a --source is given) and no shapes option is;
    shapes otherwise, with a one-line notice when it is for want of the package."""
    from studies.fashion_mnist import available

    if shapes_options:
        return "shapes"
    if source is not None or available(source):  # a folder given is used, or its error shown
        return "fashion-mnist"
    err_console.print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): the demo runs on "
                      "the built-in shapes instead.", highlight=False)
    return "shapes"


def _arms_in_turn(arms, configs, roots, paths, device, chosen, summary, demo, steps) -> None:
    """Each arm trained, then each evaluated, in this process (a GPU, or a CPU with fewer cores than arms)."""
    from engine.outputs import write_json_output
    from studies import demo as pipeline

    for i, arm in enumerate(arms):
        cfg = configs[arm]
        warm = f", warm-up {cfg.method.warmup_epochs}" if arm == "biamat" else ""
        err_console.print(f"[bold]{2 + i}/{steps}[/] training {ARMS[arm]}: {cfg.model.name}, {cfg.optim.epochs} "
                          f"epochs{warm}, into {roots[arm]}")
        summary["results"][arm] = _train_arm(cfg, roots[arm])
        write_json_output(demo.summary, "demo", summary)
    for i, arm in enumerate(arms):
        err_console.print(f"[bold]{2 + len(arms) + i}/{steps}[/] evaluating {ARMS[arm]}'s best model on the "
                          f"{chosen.test_words} (clean, PGD-20)")
        summary["results"][arm].update(pipeline.evaluate_arm(roots[arm], paths["test"], device, chosen))
        write_json_output(demo.summary, "demo", summary)


class _EpochLines:
    """Progress off a terminal: one line per finished epoch (the bar needs a terminal)."""

    def __init__(self, bar: TrainProgress, epochs: int) -> None:
        self.bar, self.epochs, self.plain = bar, epochs, not sys.stderr.isatty()

    def __call__(self, epoch: int, batch: int, batches: int, images_per_s: float) -> None:
        self.bar(epoch, batch, batches, images_per_s)
        if self.plain and batch == batches:
            err_console.print(f"  epoch {epoch + 1}/{self.epochs} trained ({images_per_s:.0f} img/s)")


def _train_arm(cfg, run_dir: Path) -> dict:
    from studies.demo import train_arm

    with TrainProgress(cfg.optim.epochs) as bar:
        # The folder is the demo's own (engine.outputs.claim_demo), so its earlier run may be replaced.
        records, facts = train_arm(cfg, run_dir, on_step=_EpochLines(bar, cfg.optim.epochs))
    print_epoch_table(records)
    return facts


def _print_results(summary: dict, demo, chosen) -> None:
    from rich.table import Table

    results = summary["results"]
    first = next(iter(results.values()))
    data = summary["data"]
    if chosen.name == "shapes":
        what = (f"{first['n']} held-out shapes ({data['primary']['classes']} classes, difficulty "
                f"{data['primary']['difficulty']}, {data['primary']['n']} training images)")
    else:
        n_classes = len(data["primary_classes"].split(","))
        what = (f"{first['n']} held-out Fashion-MNIST images ({n_classes} classes, "
                f"{n_classes * data['per_class']} training images)")
    table = Table(title=f"demo: best models on {what}, Linf eps {first['eps']}, seed {summary['seed']}",
                  show_edge=False)
    for col in ("", "clean", "PGD-20", "epochs", "train s"):
        table.add_column(col, justify="right")
    for arm, r in results.items():
        table.add_row(ARMS[arm], f"{100 * r['clean_acc']:.1f}%", f"{100 * r['robust_acc']:.1f}%", str(r["epochs"]),
                      f"{r['train_seconds']:.0f}")
    if set(results) == set(ARMS):
        at, bia = results["at"], results["biamat"]
        table.add_row("difference", f"{100 * (bia['clean_acc'] - at['clean_acc']):+.1f}",
                      f"{100 * (bia['robust_acc'] - at['robust_acc']):+.1f}", "", "")
    console.print(table)
    selection = results.get("biamat", {}).get("selection")
    if selection:
        sel = Table(title="AT+BiaMAT's confidence selection, last epoch: auxiliary samples routed high",
                    show_edge=False)
        for col in ("auxiliary classes", "seen", "high", "high %"):
            sel.add_column(col, justify="right")
        for name, seen, high in selection:
            sel.add_row(name, str(seen), str(high), f"{100 * high / max(seen, 1):.1f}")
        console.print(sel)
    if summary["verdict"]:
        console.print(summary["verdict"], highlight=False)
    for line in summary.get("study", {}).get("lines", []):
        console.print(line, highlight=False)
    console.print(f"demo folder: [bold]{demo.root}[/] ({', '.join(a + '/' for a in results)} run directories, "
                  f"demo.json), {summary['seconds']:.0f} s in all")
