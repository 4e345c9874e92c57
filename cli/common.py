"""What `train` and `demo` share: logging set-up, the training progress bar, the epoch table."""

from __future__ import annotations

import logging
import sys

from cli.console import console, err_console


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class TrainProgress:
    """A rich progress bar with live images/s, on stderr and only when it is a terminal (stdout
    keeps the results: the epoch table)."""

    def __init__(self, epochs: int) -> None:
        self.enabled = sys.stderr.isatty()
        self.epochs = epochs
        self._progress = None
        self._task = None
        self._epoch = -1

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[rate]:>8.1f} img/s"), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, epoch: int, batch: int, batches: int, images_per_s: float) -> None:
        if self._progress is None:
            return
        if epoch != self._epoch:
            self._epoch = epoch
            self._task = self._progress.add_task("train", total=batches, epoch=epoch + 1,
                                                 epochs=self.epochs, rate=0.0)
        self._progress.update(self._task, completed=batch, rate=images_per_s)


def print_epoch_table(records: list[dict]) -> None:
    from rich.table import Table

    # Short headers keep the table whole on an 80-column terminal (full names: metrics.jsonl).
    table = Table(title="training (loss: total, primary, aux low, aux high)", show_edge=False)
    for col in ("epoch", "loss", "pri", "low", "high", "omega", "high%", "clean", "robust", "img/s"):
        table.add_column(col, justify="right")

    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    for r in records:
        ratio = r.get("n_high_ratio")
        table.add_row(
            str(r["epoch"]), fmt(r["loss"]), fmt(r["loss_pri"]), fmt(r["loss_low"]), fmt(r["loss_high"]),
            fmt(r.get("omega"), ".3f"), fmt(None if ratio is None else 100 * ratio, ".1f"),
            fmt(r.get("clean_acc")), fmt(r.get("robust_acc")), fmt(r["images_per_s"], ".1f"),
        )
    console.print(table)
