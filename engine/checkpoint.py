"""Checkpoints and the exported model, written atomically.

A checkpoint is a plain dict of tensors and builtins so it loads with
`torch.load(weights_only=True)`; it is written to a temporary file in the same folder and
`os.replace`d, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

from engine.models.files import read_torch_file
from engine.run_dir import RunDir, atomic_write, write_json
from kernels.errors import InputError

FORMAT_VERSION = 1


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops torch.compile's `_orig_mod.` prefix so files never depend on how a model ran."""
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def save_checkpoint(path: str | Path, state: dict) -> None:
    state = {**state, "format_version": FORMAT_VERSION}
    atomic_write(path, lambda tmp: _torch_save(state, tmp, Path(path)))


def _torch_save(state: dict, tmp: str, path: Path) -> None:
    # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ...", "file
    # write failed") that says nothing of space: say what it means, as an OSError naming the file.
    try:
        torch.save(state, tmp)
    except RuntimeError as err:
        if "unexpected pos" not in str(err) and "write failed" not in str(err):
            raise
        free_mb = shutil.disk_usage(path.parent).free / 2**20
        raise OSError(errno.ENOSPC, f"could not write the checkpoint ({free_mb:.0f} MiB free on that disk; "
                      f"torch: {str(err).splitlines()[0]})", str(path)) from None


def load_checkpoint(path: str | Path) -> dict:
    """The training state in `path`, on the CPU; a damaged or foreign file is a ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = read_torch_file(path)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path} has checkpoint format {version}, this engine reads format {FORMAT_VERSION}: "
                         "read it with the biamat-engine version that wrote it (format None: not a biamat-engine "
                         "checkpoint)")
    return state


def export_model(folder: str | Path, state_dict: dict[str, torch.Tensor], card: dict) -> Path:
    """Writes model.safetensors and its card model.json (what `engine.models.load` reads)."""
    from safetensors.torch import save_file

    files = RunDir(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(state_dict).items()}
    atomic_write(files.weights, lambda tmp: save_file(tensors, tmp))
    write_json(files.card, card)
    return files.weights
