"""The per-epoch records of metrics.jsonl, also as TensorBoard scalars (`runtime.tensorboard`).

metrics.jsonl stays the run's record; this is a view of it for people who watch runs in
TensorBoard. Each number of an epoch's record becomes one scalar at global step = the epoch
(1-based, as in metrics.jsonl), so a resumed run continues the same curves: its writer opens
with `purge_step` = the first epoch it will write, which makes TensorBoard drop any point a
crashed session wrote past its last checkpoint (the same epochs `JsonLines.truncate_after`
drops from metrics.jsonl).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

INSTALL_HINT = "pip install tensorboard (or pip install 'biamat-engine[tensorboard]')"
# The TensorBoard section of each field of an epoch record; fields not named here go to `train/`.
SECTIONS = {
    "loss": "loss", "loss_pri": "loss", "loss_low": "loss", "loss_high": "loss",
    "clean_acc": "heldout", "robust_acc": "heldout",
    "lr": "optim",
    "omega": "routing", "n_high_ratio": "routing",
    "seconds": "time", "eval_seconds": "time", "images_per_s": "time",
}
# Counters and flags, not curves: the global step already is the epoch.
SKIPPED = frozenset({"epoch", "step", "warmup", "images"})


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl field, e.g. `loss/loss_pri`."""
    return f"{SECTIONS.get(key, 'train')}/{key}"


def _summary_writer_class() -> type["SummaryWriter"]:
    # torch.utils.tensorboard imports the `tensorboard` package; without it that import fails.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ModuleNotFoundError(f"runtime.tensorboard = true needs the tensorboard package: {INSTALL_HINT}; "
                                  "or set runtime.tensorboard = false", name="tensorboard") from err
    return SummaryWriter


def require_tensorboard() -> None:
    """Fails now, with the install line, when the package is missing: before the data is built
    and hours before the first epoch ends."""
    _summary_writer_class()


def clear_event_files(folder: Path) -> None:
    """Removes a replaced run's event files (only those: anything else in the folder is not ours),
    so TensorBoard does not draw the old run's curves under the new one's."""
    if folder.is_dir():
        for path in folder.glob("events.out.tfevents.*"):
            path.unlink()


class TensorBoardLog:
    """Writes epoch records into `folder` (RunDir.tensorboard). `first_epoch` is the epoch the
    run writes next: above 1 on resume, where it purges any later points of an earlier session."""

    def __init__(self, folder: Path, first_epoch: int = 1) -> None:
        writer = _summary_writer_class()
        self.writer = writer(log_dir=str(folder), purge_step=first_epoch if first_epoch > 1 else None)

    def write(self, record: dict) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            # bool is an int: `warmup` and any other flag are not curves.
            if key in SKIPPED or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(tag(key), float(value), global_step=epoch)
        # One flush per epoch: a crash loses no epoch that metrics.jsonl holds.
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(folder: Path, first_epoch: int, enabled: bool) -> Optional[TensorBoardLog]:
    """The run's TensorBoard log, or None when `runtime.tensorboard` is off (or on ranks > 0)."""
    return TensorBoardLog(folder, first_epoch) if enabled else None
