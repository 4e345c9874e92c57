"""The dry run's time estimate of a run: its training images over the engine's own measured step
throughput, read from docs/benchmarks.md's "Training step" tables (a `bench step` command with its
`--device` and `--model`, then its table). Only a measurement on the run's device kind and model
counts; without one the estimate says so instead of guessing a figure."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Measured:
    device: str
    """cpu or cuda, as the `bench step` command was given it."""
    model: str
    method: str
    """AT or TRADES, as the table's method column says."""
    step: str
    images_per_s: float


def measured_steps(text: str) -> list[Measured]:
    """Every engine row of every `bench step` table in `text`, keyed by its command's device and model."""
    rows: list[Measured] = []
    device = model = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("biamat-engine bench step"):
            command = line
            j = i
            while command.endswith("\\") and j + 1 < len(lines):  # the command continues on the next line
                j += 1
                command = command[:-1] + " " + lines[j].strip()
            args = shlex.split(command)
            option = lambda name: args[args.index(name) + 1] if name in args[:-1] else None  # noqa: E731
            device, model = option("--device"), option("--model")
        elif line.startswith("|") and device and model:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) >= 3 and cells[1].startswith("engine"):
                try:
                    rows.append(Measured(device, model.lower(), cells[0], cells[1], float(cells[2].replace(",", ""))))
                except ValueError:
                    pass
        elif line.startswith("#"):
            device = model = None  # a new section: its tables need their own command
    return rows


def estimate(train_images: int | None, device: str, model: str, method: str,
             text: str | None = None) -> str:
    """One line: the estimated device hours of a run, or why there is none."""
    if text is None:
        text = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
    kind = "GPU" if device == "cuda" else "CPU"
    found = [m for m in measured_steps(text)
             if m.device == device and m.model == model.lower() and m.method.lower() == method.lower()]
    if not found:
        return (f"no {kind}-hours estimate: docs/benchmarks.md has no measured training step for "
                f"{method.upper()} {model} on {device} (measure it with `biamat-engine bench step --device {device} "
                f"--model {model}`)")
    if train_images is None:
        return f"no {kind}-hours estimate: the run's data is not made yet, so its image count is unknown"
    best = max(found, key=lambda m: m.images_per_s)
    hours = train_images / best.images_per_s / 3600
    return (f"~{hours:.1f} {kind} hours of training at {best.images_per_s:,.1f} images/s "
            f"(docs/benchmarks.md: {best.step}, at that "
            "benchmark's batch and image size; evaluation not counted)")
