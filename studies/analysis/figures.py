"""The analysis figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) and
written atomically as PNG at a fixed pixel size (`size_px`)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from studies.analysis.read import ACCURACIES, LOSS_TERMS, Run
from engine.run_dir import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from studies.analysis.confidence import ConfidenceRanking

DPI = 100
CURVES_SIZE = (15.0, 4.0)  # inches: losses | accuracies | lr, side by side
ROUTING_SIZE = (7.0, 4.0)
GRID_CELL = (1.2, 1.6)  # inches per image of Fig. 4's grid: the image and its two caption lines
GRID_ROW_TITLE = 0.4  # inches above each row of the grid, for its title
LINESTYLES = {"loss_pri": "-", "loss_high": "--", "loss_low": ":", "clean_acc": "-", "robust_acc": "--"}


def size_px(size: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of `size` inches."""
    return round(size[0] * DPI), round(size[1] * DPI)


def _figure(size: tuple[float, float]) -> "Figure":
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ModuleNotFoundError("matplotlib is needed by `biamat-engine analyze`: "
                                  "pip install 'biamat-engine[analyze]'", name="matplotlib") from err
    return Figure(figsize=size, dpi=DPI)


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: "Figure", path: Path) -> Path:
    # No bbox_inches="tight": it would change the pixel size from figure to figure.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def curves(runs: list[Run], path: Path) -> Path:
    """Training curves per epoch: the loss terms, clean and robust accuracy on the held-out
    images, the learning rate. Several runs share the axes, one colour each."""
    fig = _figure(CURVES_SIZE)
    losses, accs, lrs = fig.subplots(1, 3)
    several = len(runs) > 1
    for i, run in enumerate(runs):
        colour = f"C{i}"
        prefix = f"{run.name}: " if several else ""
        for key in LOSS_TERMS:
            losses.plot(*run.series(key), LINESTYLES[key], color=colour if several else None, label=prefix + key)
        for key in ACCURACIES:
            accs.plot(*run.series(key), LINESTYLES[key], color=colour if several else None, label=prefix + key)
        lrs.plot(*run.series("lr"), color=colour, label=run.name)
    losses.set(title="loss terms", xlabel="epoch", ylabel="loss")
    accs.set(title="held-out accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    lrs.set(title="learning rate", xlabel="epoch", ylabel="lr", yscale="log")
    for ax in (losses, accs) + ((lrs,) if several else ()):
        ax.legend(fontsize="small")
    for ax in (losses, accs, lrs):
        ax.grid(alpha=0.3)
    _integer_epochs(losses, accs, lrs)
    fig.tight_layout()
    return _save(fig, path)


def routing(run: Run, path: Path) -> Path:
    """The paper's Fig. 3: the share of auxiliary samples routed high per epoch, and omega (the
    confidence threshold) on a second axis."""
    fig = _figure(ROUTING_SIZE)
    ax = fig.subplots()
    epochs, ratio = run.series("n_high_ratio")
    ax.plot(epochs, ratio, "o-", color="C0", label="n_high ratio")
    ax.set(title=f"{run.name}: auxiliary samples routed high", xlabel="epoch", ylabel="ratio routed high",
           ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    _integer_epochs(ax)
    omega_ax = ax.twinx()
    omega_ax.plot(*run.series("omega"), "s--", color="C1", label="omega")
    omega_ax.set_ylabel("omega (confidence threshold)")
    lines = ax.get_lines() + omega_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small", loc="best")
    fig.tight_layout()
    return _save(fig, path)


def grid_size(k: int) -> tuple[float, float]:
    """Inches of Fig. 4's grid with `k` images per row (two rows: most and least confident)."""
    return max(k, 1) * GRID_CELL[0], 2 * (GRID_CELL[1] + GRID_ROW_TITLE)


def confidence_grid(ranking: "ConfidenceRanking", path: Path) -> Path:
    """The paper's Fig. 4: the most confident auxiliary images in the top row, the least confident
    in the bottom one, each captioned with its class and confidence (max softmax of h_pri)."""
    k = max(len(ranking.top.index), len(ranking.bottom.index), 1)
    width, height = grid_size(k)
    fig = _figure((width, height))
    of = f" of class {ranking.only_class!r}" if ranking.only_class else ""
    rows = fig.subfigures(2, 1)
    for row, (title, part) in zip(rows, (("most", ranking.top), ("least", ranking.bottom))):
        row.suptitle(f"the {len(part.index)} {title} confident {ranking.aux_name} images{of}", fontsize="medium")
        axes = row.subplots(1, k, squeeze=False)[0]
        for ax in axes:
            ax.set_axis_off()
        for ax, image, label, conf in zip(axes, part.images, part.labels, part.confidence):
            ax.imshow(image, interpolation="nearest")
            name = textwrap.shorten(ranking.class_names[label], width=18, placeholder="...")
            ax.set_title(f"{name}\n{conf:.3f}", fontsize=7)
        # Fractions of the row: the title band on top, a thin margin elsewhere.
        row.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - GRID_ROW_TITLE / (height / 2),
                            wspace=0.08)
    return _save(fig, path)
