"""Checkpoints and the exported model, written atomically.

A checkpoint is a plain dict of tensors and builtins so it loads with
`torch.load(weights_only=True)`; it is written to a temporary file in the same folder and
`os.replace`d, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Calls `write(tmp_path)`, then renames the temporary file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp's 0600 (kept by writers that recreate the file) would make the result private.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops torch.compile's `_orig_mod.` prefix so files never depend on how a model ran."""
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def save_checkpoint(path: str | Path, state: dict) -> None:
    state = {**state, "format_version": FORMAT_VERSION}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {version}, this engine reads format {FORMAT_VERSION}")
    return state


def export_model(folder: str | Path, state_dict: dict[str, torch.Tensor], card: dict) -> Path:
    """Writes model.safetensors and its card model.json (what `engine.models.load` reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(state_dict).items()}
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write_text(folder / "model.json", json.dumps(card, indent=2) + "\n")
    return folder / "model.safetensors"
