"""`biamat-engine robustify`: a robust dataset (Ilyas et al. 2019; the paper's Appendix C, Table 6)
built from a trained model, written as a .beton that `train` reads like any other.

For each target image x (label y) of DATA, a start x_r is drawn among DATA's other images (from
`seed`), moved by `engine.feature_matching` until the model's features of x_r match those of x,
and the pair (x_r, y) is kept. The work is split into chunks of `chunk_size` targets; each
finished chunk is saved atomically under OUT.parts/, so an interrupted run, rerun with the same
arguments, continues where it stopped. OUT and its manifest are written, by the one .beton writer
(`loaders.beton.write_beton`), only once every chunk is done; then the parts are removed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from engine.feature_matching import feature_distance, match_features
from engine.models import check_image_size, load_with_card, model_file
from engine.outputs import claim_beton, record_beton
from engine.run_dir import atomic_write, check_writable, read_json, write_json
from engine.runtime import resolve_device
from kernels.errors import InputError
from loaders.beton import read_beton, read_manifest, write_beton
from loaders.images import pixel_images, to_device_images
from loaders.sources.base import ChunkedSource, sha256_files
from loaders.types import ArrayDataset

log = logging.getLogger(__name__)

FORMAT = "robustify"  # the manifest's `format` of a robust dataset


@dataclass(frozen=True)
class RobustifyPlan:
    """What decides the images a run writes: a resumed run must agree on every field, or its
    saved chunks would belong to another dataset. (Batch size and device change only how fast
    the same numbers come out, so a run may resume with others.)"""

    model_sha256: str
    data_sha256: str
    count: int
    steps: int
    step_size: float
    seed: int
    chunk_size: int


# The command-line option each plan field comes from, for the message of a refused resume.
_OPTION = {"model_sha256": "MODEL (its weights)", "data_sha256": "DATA (its images)", "count": "--limit",
           "steps": "--steps", "step_size": "--step-size", "seed": "--seed", "chunk_size": "--chunk-size"}


def parts_dir(out: str | Path) -> Path:
    """The work directory of a run writing `out`: OUT.parts beside it."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def draw_starts(n_data: int, n_targets: int, seed: int) -> np.ndarray:
    """(n_targets,) index of each target's start image: uniform over DATA's other images."""
    if n_data < 2:
        raise InputError(f"a robust dataset needs at least 2 images to start from others, DATA holds {n_data}")
    offsets = np.random.default_rng(seed).integers(1, n_data, size=n_targets)  # never 0: never itself
    return (np.arange(n_targets) + offsets) % n_data


class Parts:
    """OUT.parts/: plan.json (the RobustifyPlan) and one chunk-NNNNNN.npz per finished chunk."""

    def __init__(self, out: str | Path) -> None:
        self.root = parts_dir(out)

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    def chunk(self, index: int) -> Path:
        return self.root / f"chunk-{index:06d}.npz"

    def claim(self, plan: RobustifyPlan) -> int:
        """Starts the work directory, or checks an earlier run's plan against `plan`; returns how
        many chunks are already done. Different arguments are an InputError naming each one."""
        if self.plan_file.exists():
            saved = read_json(self.plan_file)
            wanted = dataclasses.asdict(plan)
            differ = [k for k in wanted if saved.get(k) != wanted[k]]
            if differ:
                shown = "; ".join(f"{_OPTION[k]}: {saved.get(k)!r} then, {wanted[k]!r} now" for k in differ)
                raise InputError(f"{self.root} holds chunks of an interrupted run with other arguments ({shown}); "
                                 f"rerun with that run's arguments to finish it, or delete {self.root} to start over")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.plan_file, dataclasses.asdict(plan))
        return sum(self.chunk(i).exists() for i in range(_n_chunks(plan)))

    def save(self, index: int, chunk: dict[str, np.ndarray]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
                np.savez(f, **chunk)
        atomic_write(self.chunk(index), write)

    def load(self, index: int) -> dict[str, np.ndarray]:
        path = self.chunk(index)
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (ValueError, OSError) as err:
            raise InputError(f"{path} cannot be read ({err}); delete it and rerun to compute that chunk again") from None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _n_chunks(plan: RobustifyPlan) -> int:
    return -(-plan.count // plan.chunk_size)


def robustify(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    steps: int = 1000,
    step_size: float = 0.1,
    batch_size: int = 256,
    chunk_size: int = 1000,
    seed: int = 0,
    device: str = "auto",
    limit: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Builds the robust dataset of `model` from the .beton `data` into the .beton `out` and
    returns its manifest. `progress(done, total)` is called as targets finish (resumed chunks
    count as done at the start)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if step_size <= 0:
        raise InputError(f"step size must be > 0, got {step_size}")
    if batch_size < 1 or chunk_size < 1 or (limit is not None and limit < 1):
        raise InputError("batch size, chunk size and limit must be >= 1")
    out, data = Path(out), Path(data)
    # Its own OUT.parts/ is how an interrupted run continues; a finished OUT is replaced only with --overwrite.
    claim_beton(out, "robustify", overwrite=overwrite, inputs=[data, model])
    check_writable(out)
    source = read_beton(data)
    net, card = load_with_card(model, resolve_device(device))
    _check_fit(card, source, model, data)
    weights = model_file(model)
    plan = RobustifyPlan(
        model_sha256=sha256_files([weights]), data_sha256=_data_sha256(data),
        count=min(limit or len(source), len(source)), steps=steps, step_size=float(step_size), seed=seed,
        chunk_size=chunk_size,
    )
    parts = Parts(out)
    resumed = parts.claim(plan)
    if resumed:
        log.info("%s: %d of %d chunks already done", parts.root, resumed, _n_chunks(plan))
    starts = draw_starts(len(source), plan.count, seed)
    report = progress or (lambda done, total: None)
    done = 0
    for index in range(_n_chunks(plan)):
        rows = np.arange(index * chunk_size, min((index + 1) * chunk_size, plan.count))
        if not parts.chunk(index).exists():
            chunk = _robustify_chunk(net, source, rows, starts[rows], plan, batch_size,
                                     lambda n, before=done: report(before + n, plan.count))
            parts.save(index, chunk)
        done += len(rows)
        report(done, plan.count)
    return _publish(out, parts, plan, source, model=weights, data=data, device=str(next(net.parameters()).device))


def _check_fit(card: dict, source: ArrayDataset, model: str | Path, data: Path) -> None:
    """The model must know DATA's classes and take its images."""
    classes = card.get("num_classes")
    if classes != source.num_classes:
        top = int(source.labels.max()) if len(source) else -1
        raise InputError(f"{model} classifies {classes} classes, {data} has {source.num_classes} "
                         f"(labels up to {top}): robustify the dataset the model was trained on")
    check_image_size(card, source.image_size, model, data)


def _data_sha256(data: Path) -> str:
    # The manifest's digest of the decoded images and labels; hashing the file is the fallback.
    return read_manifest(data).get("content_sha256") or sha256_files([data])


def _robustify_chunk(net, source: ArrayDataset, rows: np.ndarray, starts: np.ndarray, plan: RobustifyPlan,
                     batch_size: int, progress: Callable[[int], None]) -> dict[str, np.ndarray]:
    device = next(net.parameters()).device
    images, start_d, final_d, written_d = [], [], [], []
    for lo in range(0, len(rows), batch_size):
        target = to_device_images(source.images[rows[lo:lo + batch_size]], device)  # (B, 3, H, W)
        start = to_device_images(source.images[starts[lo:lo + batch_size]], device)
        matched = match_features(net, start, target, steps=plan.steps, step_size=plan.step_size)
        pixels = pixel_images(matched.images)  # (B, H, W, 3) uint8: what the .beton will hold
        with torch.no_grad():
            # The distance of the rounded images: the one the written dataset really has.
            written = feature_distance(net.features(to_device_images(pixels, device)), net.features(target))
        images.append(pixels)
        start_d.append(matched.start_distance.cpu().numpy())
        final_d.append(matched.distance.cpu().numpy())
        written_d.append(written.cpu().numpy())
        progress(lo + len(target))
    return {"images": np.concatenate(images), "labels": source.labels[rows], "start_index": starts,
            "start_distance": np.concatenate(start_d), "distance": np.concatenate(final_d),
            "written_distance": np.concatenate(written_d)}


def _publish(out: Path, parts: Parts, plan: RobustifyPlan, source: ArrayDataset, *, model: Path, data: Path,
             device: str) -> dict:
    n_chunks = _n_chunks(plan)
    distances = {k: [] for k in ("start_distance", "distance", "written_distance")}
    for index in range(n_chunks):
        chunk = parts.load(index)
        for k in distances:
            distances[k].append(chunk[k])
    mean = {k: float(np.concatenate(v).mean()) for k, v in distances.items()}
    facts = {
        "model": str(model.resolve()), "data": str(data.resolve()), **dataclasses.asdict(plan), "device": device,
        "objective": "min ||g(x_r) - g(x)||_2, g = penultimate features; normalised L2 gradient descent, "
                     "x_r clipped to [0, 1], start = another random image of DATA, best iterate kept",
        "mean_start_distance": mean["start_distance"], "mean_final_distance": mean["distance"],
        "mean_written_distance": mean["written_distance"],
    }

    def chunks() -> Iterator[ArrayDataset]:
        for index in range(n_chunks):
            chunk = parts.load(index)
            yield ArrayDataset(chunk["images"], chunk["labels"], list(source.class_names), name)

    name = f"{source.name}-robust"
    manifest = write_beton(
        out, ChunkedSource(chunks, list(source.class_names), source.image_size, name, count=plan.count,
                           meta={"source_sha256": plan.data_sha256, "robustify": facts}),
        format=FORMAT, split="train", source=str(data),
    )
    record_beton(out, "robustify")
    parts.remove()
    return manifest
