"""`analysis.md`: the markdown report of one or several runs, beside the figures it shows.

Every run is read (and every bad input refused) before the first file is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.analysis import figures
from engine.analysis.read import (ClassTable, Counts, Run, class_tables, comparison_rows, load_runs, percent,
                                  read_groups, slug)
from engine.run_dir import atomic_write_text

REPORT_NAME = "analysis.md"


@dataclass
class Analysis:
    out: Path
    report: Path
    figures: list[Path]


def default_out(paths: list[Path]) -> Path:
    """RUN_DIR/analysis for one run, ./analysis for several."""
    return Path(paths[0]) / "analysis" if len(paths) == 1 else Path("analysis")


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _ratio(counts: Counts) -> str:
    return f"{counts.ratio:.3f}" if counts.seen else "-"


def _class_section(table: ClassTable) -> list[str]:
    lines = [f"### Table 14: high-confidence ratio per class of {table.aux_name} (aux {table.aux}), "
             f"epoch {table.epoch}", "",
             f"{len(table.ranked)} classes seen in the run's last routed epoch, ranked by high / seen."]
    if table.unseen:
        lines.append(f"Not seen in that epoch ({len(table.unseen)}): {', '.join(table.unseen)}.")
    for title, part in (("Top", table.top), ("Bottom", table.bottom)):
        lines += ["", f"{title} {len(part)}:", ""]
        lines += _table(("rank" if title == "Top" else "rank from the bottom", "class", "high", "seen", "high / seen"),
                        [(i, c.name, c.high, c.seen, _ratio(c)) for i, c in enumerate(part, 1)])
    if table.grouping is None:
        lines += ["", "No class groups: the records carry no `related` flags; pass `--groups FILE` "
                      "(JSON {class_name: group})."]
    else:
        lines += ["", f"Per group (from the {table.grouping}; a group pools its classes' samples):", ""]
        lines += _table(("group", "classes", "high", "seen", "high / seen"),
                        [(g.group, g.classes, g.high, g.seen, _ratio(g)) for g in table.groups])
    return lines


def _run_section(run: Run, curves: Path, routing: Optional[Path], tables: list[ClassTable]) -> list[str]:
    cfg, last = run.config, run.metrics[-1]
    best = max(run.metrics, key=lambda r: r.get("robust_acc") or 0.0)
    lines = [f"## {run.name}", "",
             f"`{run.root}`: {cfg.method.name.upper()}, aux mode "
             f"{cfg.method.aux_mode if cfg.uses_aux else 'none'}, {len(run.metrics)} of {cfg.optim.epochs} epochs "
             f"logged.", "",
             f"Last epoch ({last['epoch']}): clean_acc {percent(last.get('clean_acc'))}%, robust_acc "
             f"{percent(last.get('robust_acc'))}% on the held-out images (PGD-{cfg.eval.steps}, n = {cfg.eval.n}); "
             f"best robust_acc {percent(best.get('robust_acc'))}% at epoch {best['epoch']}.", "",
             f"![training curves of {run.name}]({curves.name})", ""]
    if routing is None:
        lines += ["No routing: the run has no selection.jsonl (the confidence selection did not run: plain "
                  "training, aux mode labels/uniform/none, or still in warm-up), so Fig. 3 and Table 14 are "
                  "skipped.", ""]
        return lines
    routed = [r for r in run.metrics if r.get("n_high_ratio") is not None]
    lines += ["### Fig. 3: auxiliary samples routed high, and omega", ""]
    if routed:
        first, end = routed[0], routed[-1]
        lines += [f"Routed high: {first['n_high_ratio']:.3f} at epoch {first['epoch']}, {end['n_high_ratio']:.3f} "
                  f"at epoch {end['epoch']}; omega {end['omega']:.4f} at epoch {end['epoch']}.", ""]
    lines += [f"![routing of {run.name}]({routing.name})", ""]
    for table in tables:
        lines += _class_section(table) + [""]
    return lines


def write_analysis(paths: list[Path], out: Optional[Path] = None, groups: Optional[Path] = None) -> Analysis:
    """Reads the runs, writes their figures and `analysis.md` into `out` (default_out)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no run directory given: pass at least one RUN_DIR")
    runs = load_runs(paths)
    group_map = read_groups(groups) if groups is not None else None
    tables = {id(run): class_tables(run, group_map, f"groups file {groups}") for run in runs}
    out = Path(out) if out is not None else default_out(paths)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder: choose another --out")

    written: list[Path] = []
    sections: list[str] = []
    for run in runs:
        name = slug(run.name)
        curves = figures.curves([run], out / f"curves-{name}.png")
        routing = figures.routing(run, out / f"routing-{name}.png") if run.routed else None
        written += [curves] + ([routing] if routing else [])
        sections += _run_section(run, curves, routing, tables[id(run)])

    header, rows = comparison_rows(runs)
    lines = [f"# Analysis of {len(runs)} run{'s' if len(runs) > 1 else ''}", "",
             "## Results (the paper's Table 2 layout)", "",
             "Accuracies in % from each run's eval.json (`biamat-engine eval`; '-': not evaluated).", ""]
    lines += _table(header, rows) + [""]
    if len(runs) > 1:
        overlaid = figures.curves(runs, out / "curves-all.png")
        written.append(overlaid)
        lines += [f"![training curves of every run]({overlaid.name})", ""]
    lines += sections
    report = out / REPORT_NAME
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    return Analysis(out=out, report=report, figures=written)
