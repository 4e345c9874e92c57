"""Evaluation benchmark: images/s of the clean pass under each backend and of each attack.

Every row runs in one process on the same images and the same model: warm-up first (which
includes torch.compile / TensorRT builds), then `repeats` timed runs, each synchronised with the
device; mean and standard deviation are reported. The model is randomly initialised and the
labels are its own clean predictions, so every image is correctly classified and every attack
does its full work on every image (AutoAttack and our PGD only attack correctly classified
points; with random labels most of the work would be skipped and the figures inflated).
APGD-CE runs through the AutoAttack package with the same iteration count as PGD-K and one
restart (the package's `custom` default is 5), so the attack rows compare like with like.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import device_name, git_revision, mean_std, time_calls, write_report
from engine.evaluation.autoattack_runner import import_autoattack, run_autoattack
from engine.evaluation.backends import BACKENDS, BackendUnavailable, make_backend
from engine.evaluation.robust import robust_mask
from engine.models import build

log = logging.getLogger(__name__)

EPS, STEP = 8 / 255, 2 / 255


def _row(name: str, samples: list[float], n: int, **extra) -> dict:
    rate, rate_std = mean_std([n / s for s in samples])
    return {"name": name, "images_per_s": rate, "images_per_s_std": rate_std,
            "seconds": statistics.mean(samples), **extra}


def run(model_name: str = "wrn-16-4", n: int = 256, batch_size: int = 256, steps: int = 10,
        device: str = "cpu", repeats: int = 3, image_size: int = 32, seed: int = 0,
        out: str | Path | None = None) -> dict:
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = build(model_name, 10).to(dev).eval()
    images = torch.rand(n, 3, image_size, image_size, device=dev)  # (N, 3, H, W) in [0, 1]
    with torch.no_grad():
        labels = torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, n, batch_size)])

    clean_rows, skipped = [], {}
    exact = None
    for name in BACKENDS:
        try:
            backend = make_backend(model, name, batch_size=batch_size, image_shape=(3, image_size, image_size),
                                   device=dev)
        except BackendUnavailable as err:
            skipped[name] = str(err)
            continue
        log.info("clean pass, %s backend", name)
        samples = time_calls(lambda: backend.predict(images), dev, repeats, warmup=2)
        preds = backend.predict(images)
        exact = preds if name == "eager" else exact
        agreement = float((preds == exact).float().mean())
        clean_rows.append(_row(name, samples, n, precision=backend.precision, agreement_with_eager=agreement))

    attack_rows = []
    attacks: dict[str, Callable[[], object]] = {
        f"pgd{steps}": lambda: robust_mask(model, images, labels, f"pgd{steps}", eps=EPS, step_size=STEP,
                                           batch_size=batch_size),
        f"cw{steps}": lambda: robust_mask(model, images, labels, f"cw{steps}", eps=EPS, step_size=STEP,
                                          batch_size=batch_size),
    }
    try:
        _, package, version = import_autoattack()
        all_correct = torch.ones(n, dtype=torch.bool, device=dev)
        attacks[f"apgd-ce ({steps} it.)"] = lambda: run_autoattack(
            model, images, labels, all_correct, eps=EPS, version="custom", attacks=("apgd-ce",),
            batch_size=batch_size, seed=seed, iterations=steps, restarts=1)
    except ImportError as err:
        skipped["apgd-ce"] = str(err)
        package = version = None
    for name, fn in attacks.items():
        log.info("attack %s", name)
        attack_rows.append(_row(name, time_calls(fn, dev, repeats, warmup=1), n))

    report = {
        "benchmark": "eval",
        "device": str(dev),
        # eval's config records no thread count, so the CPU's name carries it
        "device_name": device_name(dev, threads=True),
        "torch": torch.__version__,
        "autoattack": f"{package} {version}" if package else None,
        "git_revision": git_revision(),
        "config": {"model": model_name, "n": n, "batch_size": batch_size, "steps": steps, "repeats": repeats,
                   "image_size": image_size, "eps": "8/255", "step_size": "2/255", "seed": seed},
        "clean": clean_rows,
        "attacks": attack_rows,
        "skipped": skipped,
    }
    write_report(report, out)
    return report


def format_table(report: dict) -> str:
    cfg = report["config"]
    lines = [f"eval benchmark: {cfg['model']}, n {cfg['n']}, batch {cfg['batch_size']}, "
             f"{report['device_name']}, torch {report['torch']}, rev {report['git_revision']}",
             f"{'pass':<22}{'images/s':>12}{'std':>10}{'s/run':>10}  notes"]
    for row in report["clean"]:
        lines.append(f"{'clean ' + row['name']:<22}{row['images_per_s']:>12.1f}{row['images_per_s_std']:>10.1f}"
                     f"{row['seconds']:>10.3f}  {row['precision']}, agrees with eager on "
                     f"{100 * row['agreement_with_eager']:.1f}%")
    for row in report["attacks"]:
        lines.append(f"{row['name']:<22}{row['images_per_s']:>12.1f}{row['images_per_s_std']:>10.1f}"
                     f"{row['seconds']:>10.3f}")
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)
