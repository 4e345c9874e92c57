"""The evaluation report: eps as text and the report's rows for a table."""

from __future__ import annotations

import math

from engine.config import parse_number
from engine.run_dir import read_json
from kernels.errors import InputError
from loaders.json_values import json_number


def parse_eps(text: str | float) -> float:
    """`8/255`, `0.031` or a number -> float in [0, 1]; anything else is an error naming the forms."""
    try:
        value = parse_number(text)  # the config's reader, so eval and training read 8/255 alike
    except ValueError:
        raise InputError(f"cannot read eps {text!r}: expected a number or a fraction such as 8/255") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise InputError(f"eps must lie in [0, 1] for images in [0, 1], got {text!r}")
    return value


def format_eps(value: float) -> str:
    """0.0313725... -> `8/255`: the form papers and RobustBench write; other values as decimals."""
    numerator = round(value * 255)
    if numerator == 0 and value == 0:
        return "0"
    if abs(numerator / 255 - value) < 1e-9:
        return f"{numerator}/255"
    return f"{value:g}"


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(attack, robust accuracy, count, seconds) rows in report order, clean first."""
    n = report["n"]
    rows = [("clean", f"{100 * report['clean_acc']:.2f}%", f"{report['clean_correct']}/{n}",
             f"{report['clean_seconds']:.1f}")]
    for name, entry in report["attacks"].items():
        rows.append((name, f"{100 * entry['robust_acc']:.2f}%", f"{entry['robust']}/{n}", f"{entry['seconds']:.1f}"))
        for sub, count in entry.get("robust_after", {}).items():
            rows.append((f"  after {sub}", f"{100 * count / max(n, 1):.2f}%", f"{count}/{n}",
                         f"{entry['attack_seconds'][sub]:.1f}"))
    return rows


def number_or_null(value) -> bool:
    """A JSON number (not a boolean) or null: how a record holds a measurement that may be absent."""
    return value is None or json_number(value)


def read_eval_report(path) -> dict:
    """An eval.json as `biamat-engine eval` writes it, its fields that others read checked by type
    (a report edited or written by another tool is named here, not deep in a table)."""
    report = read_json(path)
    if not isinstance(report, dict):
        raise InputError(f"{path} holds a JSON {type(report).__name__}, expected the object `biamat-engine eval` "
                         "writes; evaluate the run again")
    attacks = report.get("attacks", {})
    bad = None if isinstance(attacks, dict) else "attacks"
    bad = bad or next((k for k in ("clean_acc", "robust_acc", "seconds") if not number_or_null(report.get(k))), None)
    bad = bad or next((f"attacks.{name}" for name, entry in attacks.items()
                       if not isinstance(entry, dict) or not number_or_null(entry.get("robust_acc"))), None)
    if bad:
        raise InputError(f"{path}: {bad!r} has the wrong type for an eval report; evaluate the run again")
    return report
