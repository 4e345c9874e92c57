"""The demo (`biamat-engine demo`): plain AT and AT+BiaMAT side by side on built-in data, in
minutes on a CPU; `cli/demo_cmd.py` parses its options and prints what this module returns.

shapes -> .beton files (written by `prepare`'s own step, studies/data_steps.py) -> two runs of
one small WideResNet with the same seed, primary data and epochs (plain AT: method.aux_mode=none,
no auxiliary data; AT+BiaMAT: the auxiliary set added) -> clean and PGD-20 accuracy of each on
held-out shapes, their difference, and how the confidence selection treated related and
unrelated auxiliary classes (Table 14's reading, studies/analysis/read.py). The demo reports what
it measured, whichever arm wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from studies.data_steps import DataStep

if TYPE_CHECKING:
    from engine.config import TrainConfig

ARMS = {"at": "plain AT", "biamat": "AT+BiaMAT"}
# Where the longer comparison (several seeds and settings, both arms) is recorded.
STUDY = ("docs/demo-study.md (scripts/demo_sweep.py) and docs/demo-reproduction.md (`study amplification "
         "--scale demo`: five seeds, with the labels and uniform arms)")
# The shapes generator's (kind, split) behind each data role.
ROLES = {"primary": ("primary", "train"), "aux": ("aux", "train"), "test": ("primary", "test")}
GROUP_NAMES = {"related": "related to the primary classes", "unrelated": "unrelated (textures, noise)"}


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
        if given[own] is not None:
            k["n"] = given[own]
        for shared in ("difficulty", "classes"):
            if given[shared] is not None:
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


def prepare_data(data_dir: Path, knobs: dict[str, dict]) -> dict[str, Path]:
    """Writes the built-in shapes splits as .beton files (a file already there is kept)."""
    steps = data_steps(data_dir, knobs)
    for step in steps.values():
        step.make()
    return {role: step.out for role, step in steps.items()}


def arm_config(arm: str, paths: dict[str, Path], device: str, seed: int, epochs: int | None,
               preset: dict) -> "TrainConfig":
    """The demo preset on the prepared files: plain AT without auxiliary data, or AT+BiaMAT with it."""
    from engine.config import load_config

    overrides: dict[str, object] = {"data.primary": str(paths["primary"]), "data.test": str(paths["test"]),
                                    "runtime.device": device, "runtime.seed": seed}
    if epochs is not None:
        # Keep the preset's share of warm-up epochs, so routing still runs at the end.
        warmup = preset["method"]["warmup_epochs"] * epochs // preset["optim"]["epochs"]
        overrides |= {"optim.epochs": epochs, "method.warmup_epochs": max(0, min(warmup, epochs - 1))}
    if arm == "at":
        return load_config("demo", overrides={**overrides, "method.aux_mode": "none"}, aux=[])
    return load_config("demo", overrides=overrides, aux=[str(paths["aux"])])


def train_arm(cfg: "TrainConfig", run_dir: Path, on_step: Callable | None = None) -> tuple[list[dict], dict]:
    """(the epoch records, the arm's facts for demo.json) of one run, replacing the arm's earlier
    run (the folder is the demo's own: engine.outputs.claim_demo)."""
    import time

    from engine.trainer import train

    started = time.perf_counter()
    records = train(cfg, run_dir, overwrite=True, on_step=on_step)
    return records, {"train_seconds": round(time.perf_counter() - started, 1), "epochs": cfg.optim.epochs,
                     "model": cfg.model.name, "aux_mode": cfg.method.aux_mode}


def evaluate_arm(run_dir: Path, test: Path, device: str) -> dict:
    """Clean and PGD-20 accuracy of the arm's best model (eval.json in its run directory), and its selection."""
    from engine.evaluation.runner import EvalPlan, run_evaluation
    from engine.run_dir import RunDir
    from engine.runtime import resolve_device

    plan = EvalPlan(attacks=("clean", "pgd20"), device=str(resolve_device(device)))  # eps and step: the run's
    # The arm was just trained into the demo's own folder: its earlier report is the demo's to replace.
    report = run_evaluation(run_dir, str(test), plan, out=RunDir(run_dir).eval_report, overwrite=True)
    return {"n": report["n"], "eps": report["eps"], "clean_acc": report["clean_acc"],
            "robust_acc": report["attacks"]["pgd20"]["robust_acc"],
            "selection": [list(row) for row in selection_summary(run_dir)]}


def selection_summary(run_dir: Path) -> list[tuple[str, int, int]]:
    """(group, seen, high) over the last routed epoch, every auxiliary dataset pooled: related vs
    unrelated auxiliary classes (by the records' related flags); empty for a run without routing."""
    from studies.analysis.read import class_tables, load_run

    pooled = {name: [0, 0] for name in GROUP_NAMES.values()}
    tables = class_tables(load_run(run_dir))
    for group in (g for table in tables if table.grouping == "related flags" for g in table.groups):
        pooled[GROUP_NAMES[group.group]][0] += group.seen
        pooled[GROUP_NAMES[group.group]][1] += group.high
    return [(name, seen, high) for name, (seen, high) in pooled.items()] if tables else []


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
