"""`analysis.md`: the markdown report of one or several runs, beside the figures it shows.

Every run is read (and every bad input refused) before the first file is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.outputs import claim_folder, publish_folder
from kernels.errors import InputError
from studies.analysis import figures
from studies.analysis.confidence import ConfidenceRanking, Fig4Options, rank_run
from studies.analysis.read import (ClassTable, Counts, Run, class_tables, comparison_rows, load_runs, omega_gate_rows,
                                   percent, read_groups, slug)

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


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.0f}%)" if total else str(count)


def _groups_line(ranking: ConfidenceRanking) -> list[str]:
    if ranking.group_of is None:
        return ["No class groups: the dataset carries no related flags; pass `--groups FILE` "
                "(JSON {class_name: group})."]
    parts = []
    for title, part in (("top", ranking.top), ("bottom", ranking.bottom)):
        shares = ", ".join(f"{g} {_share(c, len(part.index))}" for g, c in ranking.group_shares(part))
        parts.append(f"{title} {len(part.index)}: {shares}")
    base = ", ".join(f"{g} {_share(c, ranking.scored)}" for g, c in ranking.group_shares_all)
    return [f"Per group (from the {ranking.grouping}): {'; '.join(parts)}; all {ranking.scored} scored images: "
            f"{base}."]


def _fig4_section(ranking: ConfidenceRanking, grid: Path) -> list[str]:
    of = f" of class {ranking.only_class!r}" if ranking.only_class else ""
    lines = [f"### Fig. 4: the most and least confident images of {ranking.aux_name} (aux {ranking.aux}){of}", "",
             f"Confidence = max softmax of the primary classifier h_pri, the score the selection routes with, "
             f"under {ranking.model_file} in eval mode (fp32, {ranking.device}), over "
             + (f"the first {ranking.scored} of the {ranking.total}" if ranking.scored < ranking.total
                else f"all {ranking.total}")
             + f" training images{of} of `{ranking.spec}`."]
    if ranking.above_omega is not None:
        lines.append(f"At or above the run's last omega ({ranking.omega:.4f}), i.e. routed high by the final "
                     f"model: {100 * ranking.above_omega:.1f}% of them.")
    lines += ["", f"![the most and least confident images of {ranking.aux_name}]({grid.name})"]
    group = ranking.group_of
    for title, part in (("Most confident", ranking.top), ("Least confident", ranking.bottom)):
        header = ("rank", "image", "class") + (("group",) if group else ()) + ("confidence",)
        rows = [(i, int(at), ranking.class_names[y]) + ((group[y],) if group else ()) + (f"{c:.4f}",)
                for i, (at, y, c) in enumerate(zip(part.index, part.labels, part.confidence), 1)]
        lines += ["", f"{title} {len(rows)} (image = position in the dataset):", ""] + _table(header, rows)
    return lines + [""] + _groups_line(ranking)


def _fig4_names(run: Run, rankings: list[ConfidenceRanking]) -> list[str]:
    """fig4-RUN-AUX.png per auxiliary dataset; two datasets of one name get their index too."""
    names = [r.aux_name for r in rankings]
    return [f"fig4-{(run.slug or slug(run.name))}-{slug(r.aux_name)}" + (f"-{r.aux}" if names.count(r.aux_name) > 1 else "")
            + ".png" for r in rankings]


def _options_section(run: Run) -> list[str]:
    """The engine options beyond the paper that the run used (docs/beyond-the-paper.md)."""
    cfg, lines = run.config, []
    if cfg.model.aux_bn == "separate":
        lines += ["Auxiliary images normalised by BatchNorms of their own (model.aux_bn = separate).", ""]
    if not (cfg.selects and cfg.method.omega_when == "accuracy"):
        return lines
    m, rows = cfg.method, omega_gate_rows(run)
    lines += ["### When omega was fixed", "",
              f"The warm-up lasted at least {m.warmup_epochs} epochs and until the primary head's clean accuracy "
              f"on {rows[0].heldout_n if rows else m.omega_holdout} held-out primary training images reached "
              f"{percent(m.omega_accuracy)}%, at most until epoch {m.omega_latest_epoch}; omega was then fixed on "
              "the next step.", ""]
    lines += _table(("epoch", "held-out clean acc %", "warm-up ended"),
                    [(r.epoch, percent(r.heldout_acc), "yes" if r.ended else "") for r in rows]) + [""]
    fixed = next((r for r in run.metrics if r.get("omega") is not None), None)
    if fixed is not None:
        lines += [f"Omega {fixed['omega']:.4f}, first recorded at epoch {fixed['epoch']}.", ""]
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
    lines += _options_section(run)
    if routing is None:
        lines += ["No routing: the run has no selection.jsonl (the confidence selection did not run: plain "
                  "training, aux mode labels/uniform/none, or still in warm-up), so Fig. 3 and Table 14 are "
                  "skipped.", ""]
        return lines
    routed = [r for r in run.metrics if r.get("n_high_ratio") is not None]
    lines += ["### Fig. 3: auxiliary samples routed high, and omega", ""]
    if routed:
        first, end = routed[0], routed[-1]
        # The oracle gate routes by the data's groups and sets no omega.
        omega = f"omega {end['omega']:.4f}" if end.get("omega") is not None else "no omega (oracle gate)"
        lines += [f"Routed high: {first['n_high_ratio']:.3f} at epoch {first['epoch']}, {end['n_high_ratio']:.3f} "
                  f"at epoch {end['epoch']}; {omega} at epoch {end['epoch']}.", ""]
    lines += [f"![routing of {run.name}]({routing.name})", ""]
    for table in tables:
        lines += _class_section(table) + [""]
    return lines


def write_analysis(paths: list[Path], out: Optional[Path] = None, groups: Optional[Path] = None,
                   fig4: Optional[Fig4Options] = None) -> Analysis:
    """Reads the runs, writes their figures and `analysis.md` into `out` (default_out). With
    `fig4`, each run's final model also scores its auxiliary data for the paper's Fig. 4."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no run directory given: pass at least one RUN_DIR")
    runs = load_runs(paths)
    group_map = read_groups(groups) if groups is not None else None
    tables = {id(run): class_tables(run, group_map, f"groups file {groups}") for run in runs}
    # Scored before anything is written: a bad --aux-data or --fig4-class leaves no half report.
    ranked = {id(run): rank_run(run, fig4, group_map, f"groups file {groups}") if fig4 else ([], [])
              for run in runs}
    out = Path(out) if out is not None else default_out(paths)
    # An analysis is redrawn from its runs, so analyze replaces its own earlier folder; never a
    # folder holding anything else (a run directory, a user's notes), never an input.
    claim_folder(out, "analyze", overwrite=True, inputs=[*paths, *([groups] if groups else [])])
    names = publish_folder(out, "analyze", lambda folder: _write_report(folder, runs, tables, ranked))
    return Analysis(out=out, report=out / names[0], figures=[out / name for name in names[1:]])


def _write_report(out: Path, runs: list[Run], tables: dict, ranked: dict) -> list[str]:
    """Figures and analysis.md into `out` (a fresh folder); the names of the report, then the figures."""
    written: list[Path] = []
    sections: list[str] = []
    for run in runs:
        name = run.slug or slug(run.name)
        curves = figures.curves([run], out / f"curves-{name}.png")
        routing = figures.routing(run, out / f"routing-{name}.png") if run.routed else None
        written += [curves] + ([routing] if routing else [])
        sections += _run_section(run, curves, routing, tables[id(run)])
        rankings, notes = ranked[id(run)]
        for ranking, name in zip(rankings, _fig4_names(run, rankings)):
            written.append(figures.confidence_grid(ranking, out / name))
            sections += _fig4_section(ranking, out / name) + [""]
        sections += [line for note in notes for line in (note, "")]

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
    report.write_text("\n".join(lines).rstrip() + "\n")
    return [report.name] + [path.name for path in written]
