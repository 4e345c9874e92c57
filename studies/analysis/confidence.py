"""The paper's Fig. 4: the auxiliary training images the final model is most and least confident
on, per auxiliary dataset.

Confidence is the score the BiaMAT selection routes with: the max softmax of the primary
classifier h_pri = f_pri . g (`kernels.route.confidence_mask`), with the model in eval mode, as
the selection scores its clean auxiliary batches. It is computed here in fp32, in batches,
without gradients, on the device the runtime picks. Only this module of the analysis touches
torch, and only inside its functions, so importing it stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from kernels.errors import InputError
from studies.analysis.read import UNGROUPED, Run
from engine.run_dir import RunDir, read_json

if TYPE_CHECKING:
    import torch

# The paper shows the top-10 and the bottom-10.
DEFAULT_K = 10


@dataclass(frozen=True)
class Fig4Options:
    """What `analyze` scores for Fig. 4."""

    k: int = DEFAULT_K
    """Images at each end of the ranking."""
    limit: Optional[int] = None
    """Score only the first `limit` images (of `only_class`, when given): a quick look at a large set."""
    only_class: Optional[str] = None
    """Rank the images of this auxiliary class only (the paper's figure shows "aircraft carrier")."""
    aux_data: tuple[str, ...] = ()
    """The auxiliary datasets, in the run's order, instead of the paths its config.toml records."""
    device: str = "auto"
    """Where the model scores the images: `auto` (cuda when there is one), `cpu`, `cuda`, `cuda:N`."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"--fig4-k {self.k}: expected at least 1 image at each end")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--fig4-limit {self.limit}: expected at least 1 image")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise InputError(f"--device {self.device!r}: expected auto, cpu, cuda or cuda:N")


@dataclass
class Ranked:
    """One end of the ranking, most extreme first."""

    index: np.ndarray
    """(k,) positions in the auxiliary dataset."""
    confidence: np.ndarray
    """(k,) float32 max softmax of h_pri."""
    labels: np.ndarray
    """(k,) the images' own auxiliary classes."""
    images: np.ndarray
    """(k, H, W, 3) uint8."""


@dataclass
class ConfidenceRanking:
    """Fig. 4 of one auxiliary dataset of one run."""

    aux: int
    aux_name: str
    spec: str
    model_file: str
    """The file the scores come from, with its epoch where its card says."""
    device: str
    class_names: list[str]
    total: int
    """Images in the dataset (of `only_class`, when given)."""
    scored: int
    only_class: Optional[str]
    top: Ranked
    bottom: Ranked
    omega: Optional[float]
    """The run's last threshold, None where no selection ran."""
    above_omega: Optional[float]
    """Share of the scored images with confidence >= omega: routed high under the final model."""
    group_of: Optional[list[str]] = None
    """The group of each class, None without a group map."""
    grouping: Optional[str] = None
    group_shares_all: list[tuple[str, int]] = field(default_factory=list)
    """(group, count) over every scored image: the base rate the two ends compare with."""

    def group_shares(self, part: Ranked) -> list[tuple[str, int]]:
        """(group, how many of `part`'s images are in it), in the order of the classes' groups."""
        return _count_groups(self.group_of, part.labels) if self.group_of is not None else []


def _count_groups(group_of: list[str], labels: np.ndarray) -> list[tuple[str, int]]:
    counts = np.bincount(labels, minlength=len(group_of))
    order = list(dict.fromkeys(group_of))
    return [(g, int(sum(c for c, gc in zip(counts, group_of) if gc == g))) for g in order]


def final_model(run: Run) -> Optional[Path]:
    """The run's final classifier: model.safetensors (the best epoch's), else best.pt, else last.pt."""
    files = RunDir(run.root)
    return next((p for p in (files.weights, files.best, files.last) if p.is_file()), None)


def _model_file(path: Path) -> str:
    card = RunDir.of(path).card
    if path.suffix == ".safetensors" and card.is_file():
        epoch = read_json(card).get("epoch")
        if epoch is not None:
            return f"{path.name} (the best epoch, {epoch})"
    return path.name


def confidences(model: "torch.nn.Module", images: np.ndarray, device: "torch.device", batch_size: int) -> np.ndarray:
    """(N,) float32 max softmax of the model's logits on (N, H, W, 3) uint8 images: the
    selection's confidence score, in eval mode and batches of `batch_size`."""
    from engine.scoring import score_batches

    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return score_batches(model, batches, device).confidence


def ends(conf: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top, bottom) positions: the k highest confidences, highest first, and the k lowest,
    lowest first; ties keep the dataset's order, so the figure is the same on every read."""
    top = np.argsort(-conf, kind="stable")[:k]
    bottom = np.argsort(conf, kind="stable")[:k]
    return top, bottom


def _aux_specs(run: Run, options: Fig4Options) -> list[str]:
    specs = list(run.config.data.aux)
    if options.aux_data:
        if len(options.aux_data) != len(specs):
            raise InputError(f"--aux-data names {len(options.aux_data)} dataset(s), but {run.root} was trained "
                             f"with {len(specs)} ({', '.join(specs) or 'none'}): give one --aux-data per "
                             "auxiliary dataset, in the run's order")
        specs = list(options.aux_data)
    return specs


def _check_class_set(run: Run, card: dict, aux: int, spec: str, names: list[str]) -> None:
    """An InputError unless `spec` has the classes the run's auxiliary dataset `aux` had (the names
    selection.jsonl recorded, else the class count of the model card): the figure ranks the
    data the routing saw, and groups by those classes."""
    recorded = next((r["class_names"] for r in reversed(run.selection) if r["aux"] == aux), None)
    counts = card.get("aux_classes") or []
    if recorded is not None and recorded != names:
        expected = f"{len(recorded)} classes ({', '.join(recorded[:4])}{', ...' if len(recorded) > 4 else ''})"
    elif recorded is None and aux < len(counts) and counts[aux] != len(names):
        expected = f"{counts[aux]} classes"
    else:
        return
    raise InputError(f"{spec} has {len(names)} classes ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}), "
                     f"but {run.root} trained auxiliary dataset {aux} on {expected}: give --aux-data the auxiliary "
                     "data the run was trained on")


def _missing(spec: str) -> bool:
    return not spec.startswith("shapes:") and not Path(spec).is_file()


def rank_run(run: Run, options: Fig4Options, groups: Optional[dict[str, str]] = None,
             groups_label: str = "--groups") -> tuple[list[ConfidenceRanking], list[str]]:
    """Fig. 4 for each auxiliary dataset of `run`: (rankings, notes), a note saying why a figure
    is missing (no auxiliary data, no model, the recorded data not on this machine). Data named
    by --aux-data must exist: its absence is an error, not a note."""
    specs = _aux_specs(run, options)
    if not specs:
        return [], ["No Fig. 4: the run has no auxiliary data."]
    model_path = final_model(run)
    if model_path is None:
        return [], [f"No Fig. 4: {run.root} holds no model yet (model.safetensors, best.pt or last.pt)."]
    if not options.aux_data:
        missing = [s for s in specs if _missing(s)]
        if missing:
            return [], [f"No Fig. 4: the auxiliary data the run recorded is not here ({', '.join(missing)}); "
                        "pass --aux-data FILE (one per auxiliary dataset) to draw it."]

    from engine.config import ConfigError
    from engine.models import load_with_card
    from engine.runtime import resolve_device
    from loaders.datasets import open_dataset

    try:
        device = resolve_device(options.device)
    except ConfigError:  # its message names runtime.device, a training setting
        raise InputError(f"--device {options.device}: this machine has no CUDA device; use --device cpu") from None
    model, card = load_with_card(model_path, device)
    omega = next((r["omega"] for r in reversed(run.metrics) if r.get("omega") is not None), None)
    rankings, notes = [], []
    for aux, spec in enumerate(specs):
        data = open_dataset(spec, "train")
        _check_class_set(run, card, aux, spec, list(data.class_names))
        index = np.arange(len(data))
        if options.only_class is not None:
            if options.only_class not in data.class_names:
                notes.append(f"No Fig. 4 for {data.name} (aux {aux}): it has no class {options.only_class!r}.")
                continue
            index = index[data.labels == data.class_names.index(options.only_class)]
        total = len(index)
        if total == 0:
            notes.append(f"No Fig. 4 for {data.name} (aux {aux}): it holds no images"
                         + (f" of class {options.only_class!r}." if options.only_class else "."))
            continue
        index = index[:options.limit]
        conf = confidences(model, data.images[index], device, run.config.eval.batch_size)
        top, bottom = ends(conf, options.k)

        def part(at: np.ndarray) -> Ranked:
            return Ranked(index=index[at], confidence=conf[at], labels=data.labels[index[at]],
                          images=data.images[index[at]])

        ranking = ConfidenceRanking(
            aux=aux, aux_name=data.name, spec=spec, model_file=_model_file(model_path), device=str(device),
            class_names=list(data.class_names), total=total, scored=len(index), only_class=options.only_class,
            top=part(top), bottom=part(bottom), omega=omega,
            above_omega=float(np.mean(conf >= omega)) if omega is not None and len(conf) else None)
        if groups is not None:
            ranking.group_of, ranking.grouping = [groups.get(n, UNGROUPED) for n in data.class_names], groups_label
        elif data.info.related is not None:
            ranking.group_of = ["related" if r else "unrelated" for r in data.info.related]
            ranking.grouping = "related flags"
        if ranking.group_of is not None:
            ranking.group_shares_all = _count_groups(ranking.group_of, data.labels[index])
        rankings.append(ranking)
    if options.only_class is not None and not rankings:
        raise InputError(f"--fig4-class {options.only_class!r}: no auxiliary dataset of {run.root} has that class")
    return rankings, notes
