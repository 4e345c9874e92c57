"""The whole evaluation of a primary classifier: sanity checks, clean pass on a backend, each
white-box attack on the exact model, AutoAttack, and the RobustBench-style report."""

from __future__ import annotations

import logging
import platform
import time
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from engine.evaluation.autoattack_runner import AA_ATTACKS, AA_VERSIONS, run_autoattack
from engine.evaluation.backends import BACKENDS, agreement_tolerance, make_backend
from engine.evaluation.report import format_eps, parse_eps
from engine.evaluation.robust import parse_attack, robust_mask
from engine.evaluation.sanity import SanityWarning, run_checks
from loaders.images import to_device_images

log = logging.getLogger(__name__)

DEFAULT_EPS = 8 / 255


@dataclass(kw_only=True)
class EvalConfig:
    attacks: tuple[str, ...] = ("clean", "pgd100", "cw100", "aa")
    """`clean`, `pgdK` (cross-entropy), `cwK` (CW margin), `aa` (AutoAttack), in report order."""
    aa_version: str = "standard"
    """AutoAttack version; `custom` when `aa_attacks` is given."""
    aa_attacks: tuple[str, ...] = ()
    """A custom AutoAttack list (e.g. apgd-ce, apgd-t) for a quick run."""
    aa_iterations: int | None = None
    """Override of APGD/FAB iterations for quick runs; None keeps the package's 100."""
    aa_state: str | None = None
    """State file that makes an AutoAttack run resumable."""
    eps: float = DEFAULT_EPS
    step_size: float = 2 / 255
    restarts: int = 1
    """PGD/CW restarts: a point is robust only if it survives every one."""
    kappa: float = 50.0
    n: int | None = None
    """Evaluate the first n test images (all when None), as RobustBench's n_ex."""
    batch_size: int = 256
    seed: int = 0
    backend: str = "eager"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ValueError("no attacks to run: pass e.g. --attacks clean,pgd100,cw100,aa")
        for name in self.attacks:
            if name != "aa":
                parse_attack(name)
        if self.aa_attacks:
            self.aa_version = "custom"
        if self.aa_version not in AA_VERSIONS:
            raise ValueError(f"unknown AutoAttack version {self.aa_version!r}: expected one of {', '.join(AA_VERSIONS)}")
        unknown = [a for a in self.aa_attacks if a not in AA_ATTACKS]
        if unknown:
            raise ValueError(f"unknown AutoAttack attack(s) {', '.join(unknown)}: expected some of {', '.join(AA_ATTACKS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must lie in [0, 1], got {self.eps}")
        if self.batch_size < 1 or self.restarts < 1 or (self.n is not None and self.n < 1):
            raise ValueError("batch_size, restarts and n must be positive")


def resolve_eps(model_path: str | Path, explicit: str | float | None) -> tuple[float, str]:
    """eps and where it came from: the option, the run's config.toml [attack] eps, the model card's
    `eps`, or the 8/255 default."""
    if explicit is not None:
        return parse_eps(explicit), "option"
    path = Path(model_path)
    run_dir = path if path.is_dir() else path.parent
    config = run_dir / "config.toml"
    if config.exists():
        with config.open("rb") as f:
            eps = tomllib.load(f).get("attack", {}).get("eps")
        if eps is not None:
            return parse_eps(eps), f"{config} [attack] eps"
    card = (path / "model.json") if path.is_dir() else path.with_suffix(".json")
    if card.exists():
        import json

        eps = json.loads(card.read_text()).get("eps")
        if eps is not None:
            return parse_eps(eps), f"{card} eps"
    return DEFAULT_EPS, "default"


def to_unit_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] and (N,) int64, on `device`."""
    device = torch.device(device)
    return to_device_images(images, device), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EvalConfig,
    *,
    model_path: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Evaluates `model` on (images, labels) as `config` says and returns the report dict.

    images: (N, 3, H, W) float in [0, 1] on the model's device; labels (N,) int64.
    """
    say = progress or (lambda _msg: None)
    device = images.device
    n = len(images)
    warnings: list[SanityWarning] = run_checks(model, images[: min(n, config.batch_size)],
                                               labels[: min(n, config.batch_size)])
    model.eval()

    # The clean pass of the exact model: the reference for the backend and every attack's start.
    say("clean accuracy (exact model)")
    start = time.perf_counter()
    clean = robust_mask(model, images, labels, "clean", batch_size=config.batch_size)  # (N,)
    clean_seconds = time.perf_counter() - start

    backend_entry = {"name": "eager", "precision": "fp32"}
    if config.backend != "eager":
        say(f"clean accuracy ({config.backend} backend)")
        backend = make_backend(model, config.backend, batch_size=config.batch_size,
                               image_shape=tuple(images.shape[1:]), device=device)
        backend.predict(images[: config.batch_size])  # compile / build outside the timing
        start = time.perf_counter()
        preds = backend.predict(images)
        seconds = time.perf_counter() - start
        backend_clean = float((preds == labels).float().mean()) if n else 0.0
        exact_clean = float(clean.float().mean()) if n else 0.0
        with torch.no_grad():
            exact_preds = torch.cat([model(images[i:i + config.batch_size]).argmax(1)
                                     for i in range(0, n, config.batch_size)])
        agreement = float((preds == exact_preds).float().mean()) if n else 1.0
        tolerance = agreement_tolerance(backend.precision)
        backend_entry = {"name": backend.name, "precision": backend.precision, "clean_acc": backend_clean,
                         "exact_clean_acc": exact_clean, "agreement": agreement, "tolerance": tolerance,
                         "seconds": seconds}
        if abs(backend_clean - exact_clean) > tolerance or 1 - agreement > tolerance:
            warnings.append(SanityWarning(
                "backend-mismatch",
                f"the {backend.name} backend's clean accuracy {100 * backend_clean:.2f}% differs from the exact "
                f"model's {100 * exact_clean:.2f}% (predictions agree on {100 * agreement:.2f}%, tolerance "
                f"{100 * tolerance:.1f}%): the reported clean accuracy is the exact model's",
            ))

    attacks: dict[str, dict] = {}
    for name in config.attacks:
        if name == "clean":
            continue
        torch.manual_seed(config.seed)  # each attack's random start is reproducible on its own
        start = time.perf_counter()
        if name == "aa":
            say(f"AutoAttack ({config.aa_version})")
            result = run_autoattack(
                model, images, labels, clean, eps=config.eps, version=config.aa_version,
                attacks=config.aa_attacks, batch_size=config.batch_size, seed=config.seed,
                iterations=config.aa_iterations, state_path=config.aa_state,
            )
            mask = result.mask
            entry = {"package": f"{result.package} {result.package_version}", "version": result.version,
                     "attacks": result.attacks, "robust_after": result.robust_after,
                     "attack_seconds": result.seconds, "resumed": result.resumed,
                     "iterations": config.aa_iterations or "package default"}
        else:
            spec = parse_attack(name)
            say(f"{name} ({'cross-entropy' if spec.kind == 'pgd' else f'CW margin, kappa {config.kappa:g}'})")
            mask = robust_mask(model, images, labels, spec, eps=config.eps, step_size=config.step_size,
                               batch_size=config.batch_size, restarts=config.restarts, kappa=config.kappa)
            entry = {"loss": "ce" if spec.kind == "pgd" else "cw", "steps": spec.steps,
                     "step_size": format_eps(config.step_size), "restarts": config.restarts,
                     "random_start": True}
            if spec.kind == "cw":
                entry["kappa"] = config.kappa
        robust = int(mask.sum())
        attacks[name] = {"robust_acc": robust / n if n else 0.0, "robust": robust,
                         "seconds": time.perf_counter() - start, **entry}

    clean_correct = int(clean.sum())
    report = {
        "model": str(model_path) if model_path is not None else None,
        "threat_model": "Linf",
        "eps": format_eps(config.eps),
        "eps_value": config.eps,
        "n": n,
        "clean_acc": clean_correct / n if n else 0.0,
        "clean_correct": clean_correct,
        "clean_seconds": clean_seconds,
        "robust_acc": min([a["robust_acc"] for a in attacks.values()], default=None),
        "autoattack_acc": attacks["aa"]["robust_acc"] if "aa" in attacks else None,
        "attacks": attacks,
        "backend": backend_entry,
        "sanity_warnings": [w.to_dict() for w in warnings],
        "device": str(device),
        "device_name": _device_name(device),
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


def load_for_eval(model_path: str | Path, test_spec: str, config: EvalConfig) -> LoadedEval:
    """The model (eval mode, on config.device) and the first config.n test images as tensors."""
    from engine.models import load
    from loaders.datasets import open_dataset

    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch has no CUDA device; use --device cpu")
    model = load(model_path, device=device)
    dataset = open_dataset(test_spec, split="test")
    count = len(dataset) if config.n is None else min(config.n, len(dataset))
    if getattr(model, "num_classes", dataset.num_classes) != dataset.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes but the test set {test_spec} has "
                         f"{dataset.num_classes}: is it the right test set?")
    images, labels = to_unit_tensors(dataset.images[:count], dataset.labels[:count], device)
    notes = [] if config.n is None or config.n <= len(dataset) else [
        f"--n {config.n} is more than the {len(dataset)} test images; evaluating all of them"]
    return LoadedEval(model, images, labels, getattr(dataset, "name", str(test_spec)), notes)


def run_evaluation(model_path: str | Path, test_spec: str, config: EvalConfig,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Loads model and test set, evaluates, and returns the report (with the test set named)."""
    loaded = load_for_eval(model_path, test_spec, config)
    report = evaluate(loaded.model, loaded.images, loaded.labels, config, model_path=str(model_path),
                      progress=progress)
    report["test"] = {"spec": str(test_spec), "name": loaded.test_name}
    report["notes"] = loaded.notes
    return report
