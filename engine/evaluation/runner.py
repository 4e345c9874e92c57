"""The whole evaluation of a primary classifier, as a pipeline: load -> sanity checks -> clean
pass of the exact model -> clean pass on a backend -> each white-box attack and AutoAttack on
the exact model -> the RobustBench-style report. What runs is an `EvalPlan` (plan.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from engine.evaluation.autoattack_runner import run_autoattack
from engine.evaluation.backends import agreement_tolerance, make_backend
from engine.evaluation.plan import EvalPlan, resolve_eps, resolve_step_size
from engine.evaluation.report import format_eps
from engine.evaluation.robust import parse_attack, robust_mask
from engine.distributed import World, batch_shard_sizes, rank_device
from engine.evaluation.sanity import SanityWarning, run_checks
from engine.outputs import OutputRefused, claim_files, write_json_output
from engine.run_dir import check_writable, read_json
from engine.runtime import device_name
from kernels.errors import InputError
from loaders.images import to_device_images

__all__ = ["EvalPlan", "evaluate", "load_for_eval", "resolve_eps", "resolve_step_size", "run_evaluation",
           "to_unit_tensors"]

log = logging.getLogger(__name__)


def to_unit_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] and (N,) int64, on `device`."""
    device = torch.device(device)
    return to_device_images(images, device), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EvalPlan,
    *,
    model_path: str | None = None,
    progress: Callable[[str], None] | None = None,
    on_partial: Callable[[dict], None] | None = None,
    world: World = World(),
) -> dict:
    """Evaluates `model` on (images, labels) as `config` says and returns the report dict:
    sanity checks -> clean pass of the exact model -> clean pass on the backend -> each attack.

    images: (N, 3, H, W) float in [0, 1] on the model's device; labels (N,) int64.
    `on_partial(report)` receives the report so far (`"complete": false`) after the clean pass
    and after each attack, so a later failure never loses what was measured.
    Under torchrun (`world` of several ranks) every rank holds all the images and evaluates its
    own contiguous run of whole batches; the per-image results are gathered, so every rank
    returns the same report. The clean pass, PGD-K and CW-K then equal one process's exactly
    (random starts are seeded per batch); AutoAttack runs on each rank's slice and its counts
    are summed.
    """
    say = progress or (lambda _msg: None)
    config = config.resolved(None)  # run_evaluation resolved it from the run already; in memory: the defaults
    head = min(len(images), config.batch_size)
    warnings: list[SanityWarning] = run_checks(model, images[:head], labels[:head])
    model.eval()
    shard = _Shard(world, len(images), config.batch_size, images.device)
    x, y = images[shard.part], labels[shard.part]
    clean_local, clean_seconds = _clean_pass(model, x, y, config, say)
    clean, clean_seconds = shard.gather(clean_local), shard.slowest(clean_seconds)
    backend_entry = {"name": "eager", "precision": "fp32"}
    if config.backend != "eager":
        backend_entry, warning = _backend_pass(model, x, y, clean_local, config, say, shard)
        warnings += [warning] if warning else []

    def report(attacks: dict[str, dict], complete: bool) -> dict:
        partial = _report(model_path, images, clean, clean_seconds, backend_entry, attacks, warnings, config,
                          complete)
        partial.update(eps_source=config.eps_source, step_size_source=config.step_size_source, world_size=world.size)
        return partial

    attacks: dict[str, dict] = {}
    for name in [a for a in config.attacks if a != "clean"]:
        if on_partial is not None:
            on_partial(report(attacks, complete=False))
        attacks[name] = _attack_pass(name, model, x, y, clean_local, config, say, shard)
    return report(attacks, complete=True)


class _Shard:
    """This rank's part of the evaluation (every image in one process) and how results come
    back together: per-image masks gathered in image order, counts summed, times the slowest."""

    def __init__(self, world: World, n: int, batch_size: int, device: torch.device) -> None:
        self.world, self.device = world, device
        self.part = world.batch_shard(n, batch_size)
        self.sizes = batch_shard_sizes(n, batch_size, world.size)

    def gather(self, mask: torch.Tensor) -> torch.Tensor:
        return self.world.gather_rows(mask, self.sizes)

    def sum(self, values: list[float]) -> list[float]:
        if self.world.size == 1:
            return values
        return self.world.sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def slowest(self, seconds: float) -> float:
        if self.world.size == 1:
            return seconds
        return float(self.world.max(torch.tensor(seconds, dtype=torch.float64, device=self.device)))

    def own_path(self, path: str | None) -> str | None:
        """A per-rank file where several ranks would otherwise share one (AutoAttack's state)."""
        if path is None or self.world.size == 1:
            return path
        return f"{path}.rank{self.world.rank}-of-{self.world.size}"


def _clean_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: EvalPlan,
                say: Callable[[str], None]) -> tuple[torch.Tensor, float]:
    """(N,) bool correct of the exact model, and its seconds: the reference for the backend and
    every attack's set of points to attack."""
    say("clean accuracy (exact model)")
    start = time.perf_counter()
    clean = robust_mask(model, images, labels, "clean", batch_size=config.batch_size)
    return clean, time.perf_counter() - start


def _backend_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor,
                  config: EvalPlan, say: Callable[[str], None], shard: _Shard) -> tuple[dict, SanityWarning | None]:
    """The clean pass on a faster backend (compile, TensorRT), timed, and checked against the
    exact model: a backend that disagrees beyond its precision's tolerance gets a warning.
    images, labels and clean are this rank's part; the counts are summed over the ranks."""
    say(f"clean accuracy ({config.backend} backend)")
    n, bs = len(images), config.batch_size
    backend = make_backend(model, config.backend, batch_size=bs, image_shape=tuple(images.shape[1:]),
                           device=images.device)
    seconds, backend_correct, agree = 0.0, 0, 0
    if n:  # a rank can be left without images when there are fewer batches than ranks
        backend.predict(images[:bs])  # compile / build outside the timing
        start = time.perf_counter()
        preds = backend.predict(images)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            exact_preds = torch.cat([model(images[i:i + bs]).argmax(1) for i in range(0, n, bs)])
        backend_correct, agree = int((preds == labels).sum()), int((preds == exact_preds).sum())
    backend_correct, exact_correct, agree, n = shard.sum([backend_correct, int(clean.sum()), agree, n])
    backend_clean = backend_correct / n if n else 0.0
    exact_clean = exact_correct / n if n else 0.0
    agreement = agree / n if n else 1.0
    tolerance = agreement_tolerance(backend.precision)
    entry = {"name": backend.name, "precision": backend.precision, "clean_acc": backend_clean,
             "exact_clean_acc": exact_clean, "agreement": agreement, "tolerance": tolerance,
             "seconds": shard.slowest(seconds)}
    if abs(backend_clean - exact_clean) <= tolerance and 1 - agreement <= tolerance:
        return entry, None
    return entry, SanityWarning(
        "backend-mismatch",
        f"the {backend.name} backend's clean accuracy {100 * backend_clean:.2f}% differs from the exact "
        f"model's {100 * exact_clean:.2f}% (predictions agree on {100 * agreement:.2f}%, tolerance "
        f"{100 * tolerance:.1f}%): the reported clean accuracy is the exact model's",
    )


def _attack_pass(name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor,
                 config: EvalPlan, say: Callable[[str], None], shard: _Shard) -> dict:
    """One attack of the plan on the exact model: its robust accuracy, count, seconds and settings.
    images, labels and clean are this rank's part; the mask is gathered over the ranks."""
    torch.manual_seed(config.seed)  # each attack's random start is reproducible on its own
    start = time.perf_counter()
    if name == "aa":
        say(f"AutoAttack ({config.aa_version})")
        result = run_autoattack(
            model, images, labels, clean, eps=config.eps, version=config.aa_version,
            attacks=config.aa_attacks, batch_size=config.batch_size, seed=config.seed,
            iterations=config.aa_iterations, state_path=shard.own_path(config.aa_state),
        )
        mask = result.mask
        after = dict(zip(result.robust_after, map(int, shard.sum(list(result.robust_after.values())))))
        entry = {"package": f"{result.package} {result.package_version}", "version": result.version,
                 "attacks": result.attacks, "robust_after": after,
                 "attack_seconds": {k: shard.slowest(v) for k, v in result.seconds.items()},
                 "resumed": result.resumed, "iterations": config.aa_iterations or "package default"}
    else:
        spec = parse_attack(name)
        say(f"{name} ({'cross-entropy' if spec.loss == 'ce' else f'CW margin, kappa {config.kappa:g}'})")
        mask = robust_mask(model, images, labels, spec, eps=config.eps, step_size=config.step_size,
                           batch_size=config.batch_size, restarts=config.restarts, kappa=config.kappa,
                           seed=config.seed, first_index=shard.part.start)
        entry = {"loss": spec.loss, "eps": format_eps(config.eps), "steps": spec.steps,
                 "step_size": format_eps(spec.step_size(config.eps, config.step_size)),
                 "restarts": config.restarts if spec.random_start else 1, "random_start": spec.random_start}
        if spec.kind == "cw":
            entry["kappa"] = config.kappa
    seconds = shard.slowest(time.perf_counter() - start)
    mask = shard.gather(mask)
    robust, n = int(mask.sum()), len(mask)
    return {"robust_acc": robust / n if n else 0.0, "robust": robust, "seconds": seconds, **entry}


def _report(model_path: str | None, images: torch.Tensor, clean: torch.Tensor, clean_seconds: float,
            backend_entry: dict, attacks: dict[str, dict], warnings: list[SanityWarning], config: EvalPlan,
            complete: bool = True) -> dict:
    """The RobustBench-style report: accuracies, the plan, where and when it ran; an incomplete
    one lists the attacks still to run under `pending`."""
    n, device = len(images), images.device
    clean_correct = int(clean.sum())
    report = {
        "model": str(model_path) if model_path is not None else None,
        "threat_model": "Linf",
        "eps": format_eps(config.eps),
        "eps_value": config.eps,
        "step_size": format_eps(config.step_size),
        "step_size_value": config.step_size,
        "n": n,
        "clean_acc": clean_correct / n if n else 0.0,
        "clean_correct": clean_correct,
        "clean_seconds": clean_seconds,
        "robust_acc": min([a["robust_acc"] for a in attacks.values()], default=None),
        "autoattack_acc": attacks["aa"]["robust_acc"] if "aa" in attacks else None,
        "attacks": attacks,
        "complete": complete,
        "pending": [a for a in config.attacks if a not in attacks and a != "clean"],
        "backend": backend_entry,
        "sanity_warnings": [w.to_dict() for w in warnings],
        "device": str(device),
        "device_name": device_name(device, threads=True),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "torch": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    report["seconds"] = clean_seconds + sum(a["seconds"] for a in attacks.values()) + backend_entry.get("seconds", 0.0)
    return report


@dataclass
class LoadedEval:
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    test_name: str = ""
    notes: list[str] = field(default_factory=list)


def _refuse_non_finite(model: nn.Module, file: Path) -> None:
    """An InputError naming `file` and the tensor when a weight or statistic is NaN or inf: such a
    model scores at chance or worse, which a report would show as a result."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{file}: {name} holds NaN or inf values, so the model cannot be evaluated; "
                             "evaluate an earlier checkpoint (best.pt) or train again")


def load_for_eval(model_path: str | Path, test_spec: str, config: EvalPlan) -> LoadedEval:
    """The model (eval mode, on config.device) and the first config.n test images as tensors."""
    from engine.models import check_image_size, load_with_card, model_file
    from loaders.datasets import open_dataset

    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch has no CUDA device; use --device cpu")
    model, card = load_with_card(model_path, device=device)
    _refuse_non_finite(model, model_file(model_path))
    dataset = open_dataset(test_spec, split="test")
    # The WideResNet pools adaptively and would score images of any size: a model is refused
    # data of a size or channel count it was not trained on, instead of reporting chance.
    check_image_size(card, dataset.image_size, model_file(model_path), test_spec)
    channels = dataset.images.shape[-1]
    if channels != model.mu.shape[1]:
        raise InputError(f"{model_file(model_path)} takes {model.mu.shape[1]}-channel images, the test set "
                         f"{test_spec} holds {channels}-channel ones: is it the right test set?")
    count = len(dataset) if config.n is None else min(config.n, len(dataset))
    if getattr(model, "num_classes", dataset.num_classes) != dataset.num_classes:
        raise InputError(f"the model has {model.num_classes} classes but the test set {test_spec} has "
                         f"{dataset.num_classes}: is it the right test set?")
    images, labels = to_unit_tensors(dataset.images[:count], dataset.labels[:count], device)
    notes = [] if config.n is None or config.n <= len(dataset) else [
        f"--n {config.n} is more than the {len(dataset)} test images; evaluating all of them"]
    return LoadedEval(model, images, labels, getattr(dataset, "name", str(test_spec)), notes)


def _covers(config: EvalPlan, test_spec: str, earlier: dict) -> bool:
    """Whether this evaluation measures at least what the earlier report holds: every attack it
    ran, on as many images, on the same test set."""
    done = set(earlier.get("attacks") or {})  # clean accuracy is measured by every evaluation
    more_images = config.n is None or (isinstance(earlier.get("n"), int) and config.n >= earlier["n"])
    return done <= set(config.attacks) and more_images and (earlier.get("test") or {}).get("spec") == str(test_spec)


def claim_report(out: str | Path, model_path: str | Path, test_spec: str, config: EvalPlan, *,
                 overwrite: bool = False) -> None:
    """`eval`'s rule for its report: never a file eval did not write, never an input (the model,
    the test set, the AutoAttack state); its own earlier report is replaced when this evaluation
    covers it (the same attacks or more, on as many images or more, same test set) or with
    --overwrite: a quick look never silently replaces a costlier measurement."""
    out = Path(out)
    inputs = [p for p in (model_path, test_spec, config.aa_state) if p is not None and Path(p).exists()]
    if claim_files([out], "eval", overwrite=True, inputs=inputs) and not overwrite:
        earlier = read_json(out)
        if not _covers(config, test_spec, earlier):
            raise OutputRefused(
                f"{out} holds a fuller evaluation ({', '.join(['clean', *sorted(earlier.get('attacks') or {})])} "
                f"on {earlier.get('n')} images of {(earlier.get('test') or {}).get('spec')}) than this one "
                f"({', '.join(config.attacks)} on {config.n or 'all'} images of {test_spec}): write this one "
                "elsewhere with --out, or pass --overwrite to replace it")
    check_writable(out)


def run_evaluation(model_path: str | Path, test_spec: str, config: EvalPlan,
                   progress: Callable[[str], None] | None = None, *, out: str | Path | None = None,
                   extra: dict | None = None, overwrite: bool = False) -> dict:
    """Loads model and test set, evaluates, and returns the report (with the test set named and
    the `extra` fields). With `out`, the report is written there after each attack as well as at
    the end; whether it may be written (claim_report) is checked before anything is loaded. Under
    torchrun each rank evaluates its part of the test set on its own GPU (see `evaluate`); give
    `out` on rank 0 only."""
    if out is not None:
        claim_report(out, model_path, test_spec, config, overwrite=overwrite)
    world = World.current()
    if world.size > 1:
        config = dataclasses.replace(config, device=rank_device(config.device))
    config = config.resolved(model_path)
    loaded = load_for_eval(model_path, test_spec, config)

    def finish(report: dict) -> dict:
        report.update(test={"spec": str(test_spec), "name": loaded.test_name}, notes=loaded.notes, **(extra or {}))
        if out is not None:
            write_json_output(out, "eval", report)
        return report

    report = evaluate(loaded.model, loaded.images, loaded.labels, config, model_path=str(model_path),
                      progress=progress, on_partial=finish if out is not None else None, world=world)
    return finish(report)
