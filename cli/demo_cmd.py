"""`biamat-engine demo`: plain AT and AT+BiaMAT side by side on built-in data, in minutes on a CPU.

shapes -> .beton files -> two runs of one small WideResNet with the same seed, primary data and
epochs (plain AT: method.aux_mode=none, no auxiliary data; AT+BiaMAT: the auxiliary set added)
-> clean and PGD-20 accuracy of each on held-out shapes, their difference, and how the
confidence selection treated related and unrelated auxiliary classes. The demo reports what it
measured, whichever arm wins.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import TrainProgress, print_epoch_table, setup_logging
from cli.console import console, err_console
from cli.options import devices

EPILOG = """[bold]Examples[/]

  biamat-engine demo                       # runs/demo/{at,biamat}, on CUDA when there is one

  biamat-engine demo --only biamat --out /tmp/demo --device cpu --epochs 3

  biamat-engine demo --difficulty 3 --classes 16 --n 640 --seed 1
"""

ARMS = {"at": "plain AT", "biamat": "AT+BiaMAT"}
# Where the longer comparison (several seeds and settings, both arms) is recorded.
STUDY = ("docs/demo-study.md (scripts/demo_sweep.py) and docs/demo-reproduction.md (`study amplification "
         "--scale demo`: five seeds, with the labels and uniform arms)")


def shapes_file(data_dir: Path, kind: str, split: str, knobs: dict) -> Path:
    """The .beton of one generated split, named by every knob and the seed, so files of
    different settings (or seeds) never stand in for each other."""
    k = knobs
    return data_dir / (f"shapes-{kind}-{split}-n{k['n']}-d{k['difficulty']}-c{k['classes']}"
                       f"-s{k['size']}-seed{k['seed']}.beton")


def prepare_shapes(data_dir: Path, knobs: dict[str, dict]) -> dict[str, Path]:
    """Writes the built-in shapes splits as .beton files (skipped when already there).

    knobs: role (primary, aux, test; aux may be left out) -> make_shapes keywords (n, size,
    seed, difficulty, classes)."""
    from loaders.beton import write_beton
    from loaders.sources.shapes import make_shapes

    roles = {"primary": ("primary", "train"), "aux": ("aux", "train"), "test": ("primary", "test")}
    paths = {}
    for role, (kind, split) in roles.items():
        if role not in knobs:
            continue
        path = shapes_file(data_dir, kind, split, knobs[role])
        if not path.exists():
            write_beton(path, make_shapes(kind, split, **knobs[role]), format="shapes", split=split,
                        source=f"shapes:{kind}")
        paths[role] = path
    return paths


def selection_summary(run_dir: Path) -> list[tuple[str, int, int]]:
    """(group, seen, high) over the last routed epoch: related vs unrelated auxiliary classes."""
    from engine.run_dir import RunDir, read_json_lines

    if not RunDir(run_dir).selection.exists():
        return []
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


def verdict(results: dict) -> str:
    """One line on what the side-by-side shows; robust accuracy decides, as in the paper."""
    if set(results) != set(ARMS):
        return ""
    at, bia = results["at"]["robust_acc"], results["biamat"]["robust_acc"]
    n = results["at"]["n"]
    diff = 100 * (bia - at)
    # Two standard errors of a difference of two accuracies on n images, roughly (one seed
    # adds training noise on top, which only the study measures).
    se = 200 * ((at * (1 - at) + bia * (1 - bia)) / max(n, 1)) ** 0.5
    if diff > se:
        return f"AT+BiaMAT is {diff:.1f} points more robust than plain AT here (one seed; noise about {se:.1f})."
    if diff < -se:
        return (f"AT+BiaMAT is {-diff:.1f} points LESS robust than plain AT at this budget (one seed; noise "
                f"about {se:.1f}); see {STUDY} for the seeds and settings measured.")
    return (f"No robust difference beyond noise (about {se:.1f} points) at this budget; see {STUDY} for the "
            f"seeds and settings measured.")


DATA, RUN = "Data", "Run"


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
    n: Annotated[Optional[int], typer.Option(
        "--n", "--train-size", min=16, help="Primary training images (default: the preset's).",
        rich_help_panel=DATA)] = None,
    aux_size: Annotated[Optional[int], typer.Option(
        min=16, help="Auxiliary training images (default: the preset's).", rich_help_panel=DATA)] = None,
    test_size: Annotated[Optional[int], typer.Option(
        min=16, help="Held-out primary images (default: the preset's).", rich_help_panel=DATA)] = None,
    difficulty: Annotated[Optional[int], typer.Option(
        min=0, max=3, help="Shapes difficulty 0..3 (default: the preset's).", rich_help_panel=DATA)] = None,
    classes: Annotated[Optional[int], typer.Option(
        min=2, max=16, help="Primary shape classes (default: the preset's).", rich_help_panel=DATA)] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log progress to stderr.", rich_help_panel=RUN)] = False,
) -> None:
    """Train plain AT and AT+BiaMAT on built-in shapes with one budget, evaluate both, print the table."""
    setup_logging(verbose)
    from engine.config import load_preset
    from engine.run_dir import DemoDir, write_json

    started = time.perf_counter()
    demo = DemoDir(out)
    demo.claim()
    preset = load_preset("demo")
    knobs = _data_knobs(preset, seed, n=n, aux=aux_size, test=test_size, difficulty=difficulty, classes=classes)
    arms = [only] if only else list(ARMS)
    summary = {"status": "running", "arms": arms, "seed": seed, "data": knobs, "results": {}}
    write_json(demo.summary, summary)  # first: it marks the folder as this demo's

    steps = 1 + 2 * len(arms)
    err_console.print(f"[bold]1/{steps}[/] writing the built-in shapes datasets as .beton files into {demo.data}")
    paths = prepare_shapes(demo.data, {role: k for role, k in knobs.items() if role != "aux" or "biamat" in arms})
    configs = {arm: _arm_config(arm, paths, device, seed, epochs, preset) for arm in arms}
    for i, arm in enumerate(arms):
        cfg = configs[arm]
        warm = f", warm-up {cfg.method.warmup_epochs}" if arm == "biamat" else ""
        err_console.print(f"[bold]{2 + i}/{steps}[/] training {ARMS[arm]}: {cfg.model.name}, {cfg.optim.epochs} "
                          f"epochs{warm}, into {demo.arm(arm).root}")
        summary["results"][arm] = _train_arm(cfg, demo.arm(arm).root)
        write_json(demo.summary, summary)
    for i, arm in enumerate(arms):
        err_console.print(f"[bold]{2 + len(arms) + i}/{steps}[/] evaluating {ARMS[arm]}'s best model on the "
                          f"held-out shapes (clean, PGD-20)")
        summary["results"][arm].update(_evaluate_arm(demo.arm(arm).root, paths["test"], device))
        write_json(demo.summary, summary)

    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["verdict"] = verdict(summary["results"])
    summary["status"] = "done"
    write_json(demo.summary, summary)
    _print_results(summary, demo)


def _data_knobs(preset: dict, seed: int, **given) -> dict[str, dict]:
    """make_shapes keywords per role: the preset's shapes specs, overridden by the options."""
    from loaders.datasets import parse_shapes_spec
    from loaders.sources.shapes import DEFAULT_CLASSES

    specs = {"primary": preset["data"]["primary"], "aux": preset["data"]["aux"][0], "test": preset["data"]["test"]}
    knobs = {}
    for role, spec in specs.items():
        _, opts = parse_shapes_spec(spec)
        k = {"n": opts.get("n", 1000), "size": opts.get("size", 32), "difficulty": opts.get("difficulty", 0),
             "classes": opts.get("classes", DEFAULT_CLASSES), "seed": seed}
        own = {"primary": "n", "aux": "aux", "test": "test"}[role]
        if given[own] is not None:
            k["n"] = given[own]
        for shared in ("difficulty", "classes"):
            if given[shared] is not None:
                k[shared] = given[shared]
        knobs[role] = k
    return knobs


def _arm_config(arm: str, paths: dict, device: str, seed: int, epochs: Optional[int], preset: dict):
    from engine.config import load_config

    overrides = [f"data.primary={paths['primary']}", f"data.test={paths['test']}",
                 f"runtime.device={device}", f"runtime.seed={seed}"]
    if epochs is not None:
        # Keep the preset's share of warm-up epochs, so routing still runs at the end.
        warmup = preset["method"]["warmup_epochs"] * epochs // preset["optim"]["epochs"]
        overrides += [f"optim.epochs={epochs}", f"method.warmup_epochs={max(0, min(warmup, epochs - 1))}"]
    if arm == "at":
        return load_config("demo", overrides=overrides + ["method.aux_mode=none"], aux=[])
    return load_config("demo", overrides=overrides, aux=[str(paths["aux"])])


class _EpochLines:
    """Progress off a terminal: one line per finished epoch (the bar needs a terminal)."""

    def __init__(self, bar: TrainProgress, epochs: int) -> None:
        self.bar, self.epochs, self.plain = bar, epochs, not sys.stderr.isatty()

    def __call__(self, epoch: int, batch: int, batches: int, images_per_s: float) -> None:
        self.bar(epoch, batch, batches, images_per_s)
        if self.plain and batch == batches:
            err_console.print(f"  epoch {epoch + 1}/{self.epochs} trained ({images_per_s:.0f} img/s)")


def _train_arm(cfg, run_dir: Path) -> dict:
    from engine.trainer import train

    started = time.perf_counter()
    with TrainProgress(cfg.optim.epochs) as bar:
        # The folder is the demo's own (DemoDir.claim), so its earlier run may be replaced.
        records = train(cfg, run_dir, overwrite=True, on_step=_EpochLines(bar, cfg.optim.epochs))
    print_epoch_table(records)
    return {"train_seconds": round(time.perf_counter() - started, 1), "epochs": cfg.optim.epochs,
            "model": cfg.model.name, "aux_mode": cfg.method.aux_mode}


def _evaluate_arm(run_dir: Path, test: Path, device: str) -> dict:
    from engine.evaluation.runner import EvalPlan, run_evaluation
    from engine.run_dir import RunDir, write_json
    from engine.runtime import resolve_device

    plan = EvalPlan(attacks=("clean", "pgd20"), device=str(resolve_device(device)))  # eps and step: the run's
    report = run_evaluation(run_dir, str(test), plan)
    write_json(RunDir(run_dir).eval_report, report)
    return {"n": report["n"], "eps": report["eps"], "clean_acc": report["clean_acc"],
            "robust_acc": report["attacks"]["pgd20"]["robust_acc"],
            "selection": [list(row) for row in selection_summary(run_dir)]}


def _print_results(summary: dict, demo) -> None:
    from rich.table import Table

    results = summary["results"]
    first = next(iter(results.values()))
    data = summary["data"]["primary"]
    table = Table(title=f"demo: best models on {first['n']} held-out shapes ({data['classes']} classes, difficulty "
                        f"{data['difficulty']}, {data['n']} training images), Linf eps {first['eps']}, seed "
                        f"{summary['seed']}", show_edge=False)
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
        console.print(summary["verdict"])
    console.print(f"demo folder: [bold]{demo.root}[/] ({', '.join(a + '/' for a in results)} run directories, "
                  f"demo.json), {summary['seconds']:.0f} s in all")
