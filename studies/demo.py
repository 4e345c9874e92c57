"""The demo (`biamat-engine demo`): plain AT and AT+BiaMAT side by side, in minutes on a CPU;
`cli/demo_cmd.py` parses its options and prints what this module returns.

Data: Fashion-MNIST where Debian's `dataset-fashion-mnist` is installed (studies/fashion_mnist.py:
the setting of `study amplification --scale fashion-mnist`, so the demo can print its one run
beside the study's seeds), else the built-in shapes (the demo preset). Either way: files written
by `prepare`'s own steps (studies/data_steps.py) -> two runs of one small WideResNet with the
same seed, primary data and epochs (plain AT: method.aux_mode=none, no auxiliary data;
AT+BiaMAT: the auxiliary sets added) -> clean and PGD-20 accuracy of each on held-out images,
their difference, and how the confidence selection treated related and unrelated auxiliary
classes (Table 14's reading, studies/analysis/read.py). The demo reports what it measured,
whichever arm wins.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from studies.data_steps import DataStep

if TYPE_CHECKING:
    from engine.config import TrainConfig

ARMS = {"at": "plain AT", "biamat": "AT+BiaMAT"}
DATASETS = ("fashion-mnist", "shapes")
# Where the longer comparison (several seeds and settings, both arms) is recorded, per dataset.
STUDY = {"fashion-mnist": "docs/fashion-mnist-study.md (`study amplification --scale fashion-mnist`, five seeds)",
         "shapes": "docs/demo-study.md (scripts/demo_sweep.py) and docs/demo-reproduction.md (`study "
                   "amplification --scale demo`: five seeds, with the labels and uniform arms)"}
REFERENCE = Path(__file__).with_name("fashion_mnist_reference.json")
"""The fashion-mnist study's per-seed results of the demo's two arms (scripts/fashion_mnist_reference.py
writes it from the study's study.csv, with the revision and machine that measured them)."""
# The shapes generator's (kind, split) behind each data role.
ROLES = {"primary": ("primary", "train"), "aux": ("aux", "train"), "test": ("primary", "test")}
GROUP_NAMES = {"related": "related to the primary classes", "unrelated": "unrelated (textures, noise)"}


@dataclass
class DemoData:
    """What the demo trains on: its preset, the files (role -> the step writing it), which roles
    are the auxiliary data, and how the selection's classes are grouped."""

    name: str
    """fashion-mnist | shapes."""
    preset: str
    data_steps: dict[str, DataStep]
    aux_roles: tuple[str, ...]
    knobs: dict = field(default_factory=dict)
    """What the data was made with (demo.json records it)."""
    groups: dict[str, str] | None = None
    """Auxiliary class name -> related / unrelated; None: the data's related flags."""
    group_names: dict[str, str] = field(default_factory=lambda: dict(GROUP_NAMES))
    test_words: str = "held-out shapes"

    def make(self, arms: list[str]) -> dict[str, Path]:
        """Writes the files the arms read (a file already there is kept); role -> path."""
        roles = [r for r in self.data_steps if r not in self.aux_roles or "biamat" in arms]
        for role in roles:
            self.data_steps[role].make()
        return {role: self.data_steps[role].out for role in roles}


def fashion_mnist_data(data_dir: Path, seed: int, source: Path | None = None) -> DemoData:
    from studies import fashion_mnist

    return DemoData(
        "fashion-mnist", fashion_mnist.PRESET, fashion_mnist.data_steps(data_dir, seed, source), ("related", "unrelated"),
        knobs={"primary_classes": fashion_mnist.PRIMARY_CLASSES, "per_class": fashion_mnist.PRIMARY_PER_CLASS,
               "aux_classes": fashion_mnist.AUX_CLASSES, "textures": fashion_mnist.TEXTURES, "seed": seed},
        groups=fashion_mnist.class_groups(),
        group_names={"related": "Fashion-MNIST's other classes (related)", "unrelated": "grey textures (unrelated)"},
        test_words="held-out Fashion-MNIST images")


def shapes_data(data_dir: Path, seed: int, **given) -> DemoData:
    from engine.config import load_preset

    knobs = data_knobs(load_preset("demo"), seed, **given)
    return DemoData("shapes", "demo", data_steps(data_dir, knobs), ("aux",), knobs=knobs)


def data_knobs(preset: dict, seed: int, **given) -> dict[str, dict]:
    """make_shapes keywords per role: the preset's shapes specs, overridden by the options
    (n, aux, test: images per role; difficulty, classes: every role's)."""
    from loaders.datasets import parse_shapes_spec
    from loaders.sources.shapes import DEFAULT_CLASSES

    specs = {"primary": preset["data"]["primary"], "aux": preset["data"]["aux"][0], "test": preset["data"]["test"]}
    knobs = {}
    for role, spec in specs.items():
        _, opts = parse_shapes_spec(spec)
        k = {"n": opts.get("n", 1000), "size": opts.get("size", 32), "difficulty": opts.get("difficulty", 0),
             "classes": opts.get("classes", DEFAULT_CLASSES), "seed": seed}
        own = {"primary": "n", "aux": "aux", "test": "test"}[role]
        if given.get(own) is not None:
            k["n"] = given[own]
        for shared in ("difficulty", "classes"):
            if given.get(shared) is not None:
                k[shared] = given[shared]
        knobs[role] = k
    return knobs


def shapes_file(data_dir: Path, kind: str, split: str, knobs: dict) -> Path:
    """The .beton of one generated split, named by every knob and the seed, so files of
    different settings (or seeds) never stand in for each other."""
    k = knobs
    return data_dir / (f"shapes-{kind}-{split}-n{k['n']}-d{k['difficulty']}-c{k['classes']}"
                       f"-s{k['size']}-seed{k['seed']}.beton")


def data_steps(data_dir: Path, knobs: dict[str, dict]) -> dict[str, DataStep]:
    """The `prepare shapes` step writing each role's split (roles left out of `knobs`: none)."""
    return {role: DataStep("prepare", ("shapes", kind), shapes_file(data_dir, kind, split, knobs[role]),
                           (("split", split), *knobs[role].items()))
            for role, (kind, split) in ROLES.items() if role in knobs}


def arm_config(arm: str, data: DemoData, paths: dict[str, Path], device: str, seed: int,
               epochs: int | None) -> "TrainConfig":
    """The data's preset on the prepared files: plain AT without auxiliary data, or AT+BiaMAT with it."""
    from engine.config import load_config, load_preset

    preset = load_preset(data.preset)
    overrides: dict[str, object] = {"data.primary": str(paths["primary"]), "data.test": str(paths["test"]),
                                    "runtime.device": device, "runtime.seed": seed}
    if epochs is not None:
        # Keep the preset's share of warm-up epochs, so routing still runs at the end.
        warmup = preset["method"]["warmup_epochs"] * epochs // preset["optim"]["epochs"]
        overrides |= {"optim.epochs": epochs, "method.warmup_epochs": max(0, min(warmup, epochs - 1))}
    if arm == "at":
        return load_config(data.preset, overrides={**overrides, "method.aux_mode": "none"}, aux=[])
    return load_config(data.preset, overrides=overrides, aux=[str(paths[role]) for role in data.aux_roles])


def train_arm(cfg: "TrainConfig", run_dir: Path, on_step: Callable | None = None) -> tuple[list[dict], dict]:
    """(the epoch records, the arm's facts for demo.json) of one run, replacing the arm's earlier
    run (the folder is the demo's own: engine.outputs.claim_demo)."""
    import time

    from engine.trainer import train

    started = time.perf_counter()
    records = train(cfg, run_dir, overwrite=True, on_step=on_step)
    return records, {"train_seconds": round(time.perf_counter() - started, 1), "epochs": cfg.optim.epochs,
                     "model": cfg.model.name, "aux_mode": cfg.method.aux_mode}


class EpochLines:
    """Progress of an arm trained in another process: one line per finished epoch on stderr
    (picklable, unlike a progress bar)."""

    def __init__(self, arm: str, epochs: int) -> None:
        self.arm, self.epochs = arm, epochs

    def __call__(self, epoch: int, batch: int, batches: int, images_per_s: float) -> None:
        if batch == batches:
            print(f"  {ARMS[self.arm]}: epoch {epoch + 1}/{self.epochs} trained ({images_per_s:.0f} img/s)",
                  file=sys.stderr, flush=True)


def one_thread() -> None:
    """A CPU arm's own process trains with one thread, as every study run did: the thread count
    changes the order of floating-point sums, and on a problem this small that alone moves a
    run's accuracy by several points (docs/fashion-mnist-study.md), so one thread is what lets
    the demo repeat the study's run of its seed. (A process initializer: it sets the
    environment the process's numba and OpenMP read.)"""
    import os

    os.environ["OMP_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's thread count set to `n` in this process for the block, then given back (the
    in-process arms of a machine with one core; the environment is left alone)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_and_evaluate(arm: str, cfg: "TrainConfig", run_dir: Path, test: Path, device: str,
                       data: DemoData) -> tuple[list[dict], dict]:
    """One arm, start to end, in the calling process: (epoch records, facts with the evaluation)."""
    records, facts = train_arm(cfg, run_dir, on_step=EpochLines(arm, cfg.optim.epochs))
    facts.update(evaluate_arm(run_dir, test, device, data))
    return records, facts


def arms_side_by_side(configs: dict[str, "TrainConfig"], roots: dict[str, Path], test: Path, device: str,
                      data: DemoData) -> dict[str, tuple[list[dict], dict]]:
    """Every arm in a process of its own, one thread each, at once (a CPU with a core per arm):
    the demo's wall time is its slowest arm's."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(len(configs), mp_context=get_context("spawn"), initializer=one_thread) as pool:
        futures = {arm: pool.submit(train_and_evaluate, arm, cfg, roots[arm], test, device, data)
                   for arm, cfg in configs.items()}
        return {arm: future.result() for arm, future in futures.items()}


def evaluate_arm(run_dir: Path, test: Path, device: str, data: DemoData | None = None) -> dict:
    """Clean and PGD-20 accuracy of the arm's best model (eval.json in its run directory), and its selection."""
    from engine.evaluation.runner import EvalPlan, run_evaluation
    from engine.run_dir import RunDir
    from engine.runtime import resolve_device

    plan = EvalPlan(attacks=("clean", "pgd20"), device=str(resolve_device(device)))  # eps and step: the run's
    # The arm was just trained into the demo's own folder: its earlier report is the demo's to replace.
    report = run_evaluation(run_dir, str(test), plan, out=RunDir(run_dir).eval_report, overwrite=True)
    return {"n": report["n"], "eps": report["eps"], "clean_acc": report["clean_acc"],
            "robust_acc": report["attacks"]["pgd20"]["robust_acc"],
            "selection": [list(row) for row in selection_summary(run_dir, data)]}


def selection_summary(run_dir: Path, data: DemoData | None = None) -> list[tuple[str, int, int]]:
    """(group, seen, high) over the last routed epoch, every auxiliary dataset pooled: related vs
    unrelated auxiliary classes (by the data's declared groups, else the records' related flags);
    empty for a run without routing."""
    from studies.analysis.read import class_tables, load_run

    groups, names = (data.groups, data.group_names) if data else (None, GROUP_NAMES)
    pooled = {name: [0, 0] for name in names.values()}
    tables = class_tables(load_run(run_dir), groups)
    for group in (g for table in tables if table.grouping is not None for g in table.groups if g.group in names):
        pooled[names[group.group]][0] += group.seen
        pooled[names[group.group]][1] += group.high
    return [(name, seen, high) for name, (seen, high) in pooled.items()] if tables else []


def verdict(results: dict, data: str = "shapes") -> str:
    """One line on what this run's side-by-side shows; robust accuracy decides, as in the paper."""
    if set(results) != set(ARMS):
        return ""
    at, bia = results["at"]["robust_acc"], results["biamat"]["robust_acc"]
    n = results["at"]["n"]
    diff = 100 * (bia - at)
    # Two standard errors of a difference of two accuracies on n images, roughly (one seed
    # adds training noise on top, which only the study measures).
    se = 200 * ((at * (1 - at) + bia * (1 - bia)) / max(n, 1)) ** 0.5
    study = STUDY[data]
    if diff > se:
        return f"AT+BiaMAT is {diff:.1f} points more robust than plain AT here (one seed; test noise about {se:.1f})."
    if diff < -se:
        return (f"AT+BiaMAT is {-diff:.1f} points LESS robust than plain AT at this budget (one seed; test noise "
                f"about {se:.1f}); see {study} for the seeds and settings measured.")
    return (f"No robust difference beyond test noise (about {se:.1f} points) at this budget; see {study} for the "
            f"seeds and settings measured.")


def read_reference(path: Path = REFERENCE) -> dict | None:
    """The fashion-mnist study's per-seed results of the demo's arms; None where none is recorded."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


@dataclass(frozen=True)
class StudyComparison:
    """This run beside the study's seeds: each arm's mean and sd, and where this run's
    BiaMAT - AT difference (PGD-20, points) falls in the study's seed-to-seed spread."""

    lines: list[str]
    within: bool | None
    """Inside mean +- 2 sd of the study's per-seed differences; None when not comparable."""


def compare_with_study(results: dict, reference: dict | None, same_setting: bool) -> StudyComparison:
    if reference is None:
        return StudyComparison(["The fashion-mnist study's numbers are not recorded in this revision "
                                f"({REFERENCE.name} is missing); see {STUDY['fashion-mnist']}."], None)
    seeds = reference["seeds"]
    head = (f"The study, seeds {', '.join(map(str, seeds))} (revision {reference['revision']}, "
            f"{reference['machine']}), mean ± sd over seeds:")
    lines = [head]
    for arm in ARMS:
        r = reference["arms"][arm]
        lines.append(f"  {ARMS[arm]}: clean {_mean_sd(r['clean'])}, PGD-20 {_mean_sd(r['pgd20'])}")
    diffs = [100 * (b - a) for a, b in zip(reference["arms"]["at"]["pgd20"], reference["arms"]["biamat"]["pgd20"])]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    lines.append(f"  AT+BiaMAT - plain AT, PGD-20: {mean:+.1f} ± {sd:.1f} points "
                 f"(per seed {', '.join(f'{d:+.1f}' for d in diffs)}); {reference['verdict']}")
    if set(results) != set(ARMS):
        return StudyComparison(lines, None)
    if not same_setting:
        lines.append("This run changed the study's setting (--epochs), so its numbers are not comparable with these.")
        return StudyComparison(lines, None)
    this = 100 * (results["biamat"]["robust_acc"] - results["at"]["robust_acc"])
    low, high = mean - 2 * sd, mean + 2 * sd
    within = low <= this <= high
    where = "within" if within else "outside"
    lines.append(f"This run: {this:+.1f} points, {where} the study's seed-to-seed spread "
                 f"(mean ± 2 sd: {low:+.1f} to {high:+.1f}).")
    return StudyComparison(lines, within)


def _mean_sd(values: list[float]) -> str:
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.fmean(pct):.1f} ± {sd:.1f}%"
