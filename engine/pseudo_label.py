"""Pseudo-labelled auxiliary data, built as Carmon et al. (RST) and the paper's Table 3 / Table 7 do.

A classifier of the primary classes scores every auxiliary image; each image's predicted class
(argmax) becomes its label and its max softmax its confidence. Per predicted class the K most
confident images are kept (the paper's ImageNet-500k: the top 50k per CIFAR-10 class, the top 5k
per CIFAR-100 class; ImageNet-(N x 100)k in Table 7), or every image, and written as a .beton
whose classes are the classifier's. `method.aux_mode = "pseudo"` then trains on it.

Two passes over the auxiliary file, one chunk of images in host memory at a time: scoring keeps
a class and a confidence per image (12 bytes: 15 MB for ImageNet), writing reads the kept images
again. The .beton writer publishes atomically, so an error or Ctrl-C leaves no OUT behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from engine.models import check_image_size, load_with_card, model_file
from engine.outputs import claim_beton, record_beton
from engine.runtime import resolve_device
from engine.scoring import Scores, score_batches
from kernels.errors import InputError
from loaders.beton import BetonIndex, iter_beton, read_manifest, write_beton
from loaders.sources.base import ChunkedSource, sha256_files
from loaders.types import ArrayDataset

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(phase, images_done_now, images_in_phase), phase "score" then "write"."""

_WRITE_ROWS = 4096  # images per chunk of the second pass (12 MB at 32 px, 50 MB at 64 px)


@dataclass(frozen=True)
class PseudoLabelResult:
    out: Path
    manifest: dict
    scored: int
    kept_per_class: list[int]
    short_classes: list[str]
    """Classes that kept fewer than K images (fewer were predicted as them)."""


def score_beton(model: nn.Module, path: str | Path, *, batch_size: int, device: torch.device,
                progress: Progress | None = None) -> Scores:
    """Predicted class and confidence of every image of the .beton `path` (`engine.scoring`),
    read `batch_size` images at a time."""
    total = BetonIndex(path).num_samples
    on_batch = None if progress is None else (lambda n: progress("score", n, total))
    return score_batches(model, (chunk.images for chunk in iter_beton(path, rows=batch_size)), device, on_batch)


def top_k_per_class(scores: Scores, k: int | None, num_classes: int) -> np.ndarray:
    """Sorted positions of the images kept: for each predicted class its k most confident ones
    (equal confidences: the earlier image first), or every image when k is None."""
    if k is None:
        return np.arange(len(scores.predicted))
    if k < 1:
        raise ValueError(f"top-k per class must be at least 1, got {k}")
    # Class ascending, then confidence descending, then position: each class's best come first.
    order = np.lexsort((np.arange(len(scores.predicted)), -scores.confidence, scores.predicted))
    sorted_classes = scores.predicted[order]
    starts = np.searchsorted(sorted_classes, np.arange(num_classes))
    rank = np.arange(len(order)) - starts[sorted_classes]  # place within its class
    return np.sort(order[rank < k])


def pseudo_label(model_path: str | Path, aux_path: str | Path, out_path: str | Path, *, top_k: int | None,
                 batch_size: int = 512, device: str = "auto", overwrite: bool = False,
                 progress: Progress | None = None) -> PseudoLabelResult:
    """Scores `aux_path` with the classifier at `model_path` (anything `engine.models.load`
    takes), keeps the `top_k` most confident images per predicted class (all when None), and
    writes them to `out_path` with their predicted classes as labels. Everything is checked
    before the first image is scored."""
    aux, out = Path(aux_path), Path(out_path)
    if top_k is not None and top_k < 1:
        raise InputError(f"top-k per class must be at least 1, got {top_k}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if out.suffix != ".beton":
        raise InputError(f"{out}: the output must end in .beton")
    index = BetonIndex(aux)  # FileNotFoundError naming the file
    aux_manifest = read_manifest(aux)
    claim_beton(out, "pseudo-label", overwrite=overwrite, inputs=[aux, model_path])
    weights = model_file(model_path)
    torch_device = resolve_device(device)
    model, card = load_with_card(weights, torch_device)
    num_classes = model.num_classes
    class_names = _class_names(card, num_classes, weights)
    check_image_size(card, index.image_size, weights, aux)
    n = index.num_samples
    if n == 0:
        raise InputError(f"{aux} holds no images: no image kept, nothing to write")
    if top_k is not None and top_k * num_classes > n:
        raise InputError(
            f"--top-k-per-class {top_k} asks for {top_k} x {num_classes} classes = {top_k * num_classes} images, "
            f"but {aux} holds {n}: choose K of at most {n // num_classes} or keep every image with --all"
        )

    log.info("scoring %d images of %s with %s on %s", n, aux, weights, torch_device)
    if torch_device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # the layout the images arrive in
    scores = score_beton(model, aux, batch_size=batch_size, device=torch_device, progress=progress)
    kept = top_k_per_class(scores, top_k, num_classes)
    if len(kept) == 0:
        raise InputError(f"no image of {aux} was kept: nothing to write")
    kept_per_class = np.bincount(scores.predicted[kept], minlength=num_classes)
    short = [name for name, count in zip(class_names, kept_per_class) if top_k is not None and count < top_k]
    if short:
        log.warning("%d classes kept fewer than %d images (fewer were predicted as them): %s",
                    len(short), top_k, ", ".join(short[:10]))

    meta = {
        # The manifest's source checksum: the content digest of the auxiliary .beton.
        "source_sha256": aux_manifest.get("content_sha256"),
        "pseudo_label": {
            "method": "Carmon et al. (RST) pseudo-labels: argmax class of the model, max softmax as confidence",
            "source_beton": str(aux.resolve()),
            "source_name": aux_manifest.get("name"),
            "source_bytes": aux.stat().st_size,
            "source_content_sha256": aux_manifest.get("content_sha256"),
            "model": str(weights.resolve()),
            "model_sha256": sha256_files([weights]),
            "model_architecture": card.get("architecture"),
            "top_k_per_class": top_k,
            "scored": int(n),
            "kept": int(len(kept)),
            "kept_per_class": [int(c) for c in kept_per_class],
            "min_confidence_per_class": _min_per_class(scores, kept, num_classes),
        },
    }
    manifest = _write(out, aux, scores, kept, class_names, index.image_size, aux_manifest, meta, top_k, progress)
    record_beton(out, "pseudo-label")
    return PseudoLabelResult(out, manifest, int(n), [int(c) for c in kept_per_class], short)


def _class_names(card: dict, num_classes: int, weights: Path) -> list[str]:
    names = [str(c) for c in card.get("class_names") or []]
    if len(names) == num_classes:
        return names
    log.warning("%s: the model card names %d classes for a %d-class model: the pseudo-labelled data "
                "names them 0..%d", weights, len(names), num_classes, num_classes - 1)
    return [str(i) for i in range(num_classes)]


def _min_per_class(scores: Scores, kept: np.ndarray, num_classes: int) -> list[float | None]:
    """The lowest confidence kept in each class (None where none was kept): the cut-off K gave."""
    lowest = np.full(num_classes, np.inf)
    np.minimum.at(lowest, scores.predicted[kept], scores.confidence[kept].astype(np.float64))
    return [None if not np.isfinite(v) else round(float(v), 6) for v in lowest]


def _write(out: Path, aux: Path, scores: Scores, kept: np.ndarray, class_names: list[str], size: int,
           aux_manifest: dict, meta: dict, top_k: int | None, progress: Progress | None) -> dict:
    name = f"{aux_manifest.get('name', aux.stem)}-pseudo-{'all' if top_k is None else f'top{top_k}'}"

    def chunks():
        for start, chunk in zip(range(0, len(kept), _WRITE_ROWS), iter_beton(aux, _WRITE_ROWS, kept)):
            labels = scores.predicted[kept[start:start + _WRITE_ROWS]]
            yield ArrayDataset(chunk.images, labels, class_names, name)

    source = ChunkedSource(chunks, class_names, size, name, count=len(kept), meta=meta)
    advance = None if progress is None else (lambda done: progress("write", done, len(kept)))
    return write_beton(out, source, format="pseudo-label", split="train", source=str(aux), progress=advance)
