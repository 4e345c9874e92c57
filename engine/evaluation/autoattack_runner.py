"""AutoAttack through the original code (`pyautoattack`, or upstream `autoattack`), resumable.

The attacks of the list run one at a time, each on the points still robust after the previous
ones (exactly the order and batching of `run_standard_evaluation`, and with a fixed seed the same
adversarial examples), and after each attack the surviving points are written to a state file
with an atomic replace. An interrupted run started again with the same state file skips the
attacks already done. This is our own state rather than the package's `state_path` because
(1) it records each attack's robust accuracy and time for the report, (2) the package writes its
state in place (an interruption mid-write corrupts it), and (3) upstream releases without
`state_path` resume the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from engine.run_dir import atomic_write_text
from kernels.errors import InputError

log = logging.getLogger(__name__)

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
STATE_FORMAT = 1


def import_autoattack() -> tuple[type, str, str]:
    """(AutoAttack class, package name, version): `pyautoattack` first, upstream `autoattack` second."""
    try:
        import pyautoattack

        return pyautoattack.AutoAttack, "pyautoattack", getattr(pyautoattack, "__version__", "?")
    except ImportError:
        pass
    try:
        from autoattack import AutoAttack
        import autoattack

        return AutoAttack, "autoattack", getattr(autoattack, "__version__", "?")
    except ImportError:
        raise ImportError(
            "AutoAttack is not installed: pip install 'biamat-engine[autoattack]' (the pyautoattack "
            "package), or the upstream code: pip install git+https://github.com/fra31/auto-attack"
        ) from None


def make_adversary(
    model: nn.Module, *, eps: float, version: str = "standard", attacks: Sequence[str] = (),
    device: torch.device | str = "cpu", seed: int | None = 0, iterations: int | None = None,
    restarts: int | None = None,
):
    """An AutoAttack object for the Linf threat model, whichever package is installed.

    version `custom` runs `attacks` with the package's default parameters; the others fix
    their own list. `iterations` overrides the iterations of APGD and FAB, `restarts` the
    restarts of untargeted APGD (for quick runs and like-for-like timings only: published
    figures use the package's settings).
    """
    if version not in AA_VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}: expected one of {', '.join(AA_VERSIONS)}")
    unknown = [a for a in attacks if a not in AA_ATTACKS]
    if unknown:
        raise ValueError(f"unknown AutoAttack attack(s) {unknown}: expected some of {', '.join(AA_ATTACKS)}")
    if version == "custom" and not attacks:
        raise InputError("AutoAttack version 'custom' needs a list of attacks, e.g. apgd-ce,apgd-t")
    if version != "custom" and attacks:
        raise ValueError(f"AutoAttack version {version!r} fixes its own attacks; use version 'custom' "
                         "to choose them")
    cls, package, _ = import_autoattack()
    device = str(device)
    if package == "pyautoattack":
        kwargs = {"attacks": list(attacks)} if version == "custom" else {}
        adversary = cls(model, device=device, eps=eps, norm="Linf", seed=seed, version=version, **kwargs)
    else:
        adversary = cls(model, norm="Linf", eps=eps, version=version, verbose=False,
                        attacks_to_run=list(attacks), device=device, seed=seed)
    adversary.verbose = False
    if iterations is not None:
        for name in ("apgd", "apgd_targeted", "fab"):
            _set_iterations(getattr(adversary, name), iterations)
    if restarts is not None:
        adversary.apgd.n_restarts = restarts
    return adversary


def fit_targets(adversary, num_classes: int) -> None:
    """AutoAttack's targeted attacks (APGD-T, FAB-T) target the 9 most likely other classes, as
    for CIFAR-10; a model with fewer classes has `num_classes - 1` to target (with 9 the attack
    reads past the logits: an IndexError). The DLR losses read the 3rd (APGD-DLR) and 4th
    (APGD-T) largest logit, so those attacks are refused below 3 and 4 classes."""
    dlr = [a for a in adversary.attacks_to_run if a in ("apgd-dlr", "apgd-t")]
    need = 4 if "apgd-t" in dlr else 3
    if dlr and num_classes < need:
        raise InputError(f"AutoAttack's {', '.join(dlr)} need at least {need} classes (their DLR losses read the "
                         f"third and, for APGD-T, the fourth largest logit); this model has {num_classes}: run "
                         "--aa-attacks apgd-ce,fab-t,square instead")
    for name in ("apgd_targeted", "fab"):
        attack = getattr(adversary, name, None)
        if attack is not None and hasattr(attack, "n_target_classes"):
            attack.n_target_classes = min(attack.n_target_classes, num_classes - 1)


# What an attack derives from its iteration count when it is built: APGD sizes its step-size
# schedule (checkpoints every n_iter_2, shrinking by size_decr down to n_iter_min) from it.
_SCHEDULE = ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr")


def _set_iterations(attack, iterations: int) -> None:
    """`attack` as if built with `iterations`: the schedule comes from a throwaway instance of
    the same class, so the package's own formulas size it (setting n_iter alone would keep a
    schedule sized for the default 100 iterations). FAB reads n_iter as it runs."""
    if not hasattr(attack, "n_iter_2"):
        attack.n_iter = iterations
        return
    probe = type(attack)(attack.model, n_iter=iterations, eps=attack.eps, norm=attack.norm, device=attack.device)
    for name in _SCHEDULE:
        if hasattr(probe, name):
            setattr(attack, name, getattr(probe, name))


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands on a contiguous (NCHW) gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class NCHWModel(nn.Module):
    """`model` as AutoAttack needs it: the package `.view`s inputs and input gradients as flat
    rows, which fails on channels-last tensors. A channels-last model (the engine's layout on
    GPUs) would hand back channels-last gradients even for NCHW inputs; this wrapper makes them
    contiguous, while the model itself still runs in its own layout."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ContiguousGradient.apply(x))


def run_attack_list(adversary, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The package's own `run_standard_evaluation` on (x, y) with adversary.attacks_to_run."""
    if type(adversary).__module__.startswith("pyautoattack"):
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    else:
        x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
    return x_adv


@dataclass
class AAResult:
    package: str
    package_version: str
    version: str
    attacks: list[str]
    robust_after: dict[str, int] = field(default_factory=dict)
    """Points still robust after each attack (cumulative, in list order)."""
    seconds: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    """Attacks whose results came from the state file, not from this run."""
    mask: torch.Tensor | None = None
    """(N,) bool: robust after every attack."""


def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for tensor in [*model.state_dict().values(), x, y]:
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_state(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # the latter: a binary file
        raise InputError(f"AutoAttack state file {path} is not valid JSON ({err}); delete it to start over") from None
    if state.get("format") != STATE_FORMAT or state.get("fingerprint") != fingerprint:
        raise InputError(
            f"AutoAttack state file {path} belongs to another evaluation (different model, images, eps, "
            "seed or attack list): delete it to start over, or pass another state file"
        )
    return state


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_mask: torch.Tensor,
    *,
    eps: float,
    version: str = "standard",
    attacks: Sequence[str] = (),
    batch_size: int = 250,
    seed: int | None = 0,
    iterations: int | None = None,
    restarts: int | None = None,
    state_path: str | Path | None = None,
    on_attack_done: Callable[[str, int], None] | None = None,
) -> AAResult:
    """Runs AutoAttack on (x, y), starting from the points in `clean_mask` (correct clean).

    x: (N, 3, H, W) in [0, 1] on the model's device; y: (N,). With `state_path`, progress is
    saved after each attack and an existing state of the same evaluation is resumed.
    `on_attack_done(attack, n_robust)` is called after each attack finishes.
    """
    model.eval()
    device = x.device
    x = x.contiguous()  # the package views inputs as flat rows: NCHW, whatever layout the caller has
    adversary = make_adversary(NCHWModel(model), eps=eps, version=version, attacks=attacks, device=device,
                               seed=seed, iterations=iterations, restarts=restarts)
    if len(x):
        with torch.no_grad():
            fit_targets(adversary, int(model(x[:1]).shape[1]))
    attack_list = list(adversary.attacks_to_run)
    _, package, package_version = import_autoattack()
    result = AAResult(package, package_version, version, attack_list)
    robust = clean_mask.detach().to(device=device, dtype=torch.bool).clone()  # (N,)

    path = Path(state_path) if state_path is not None else None
    state = None
    if path is not None:
        settings = {"eps": eps, "version": version, "attacks": attack_list, "seed": seed,
                    "iterations": iterations, "restarts": restarts, "batch_size": batch_size}
        fingerprint = _fingerprint(model, x, y, settings)
        state = _load_state(path, fingerprint) or {
            "format": STATE_FORMAT, "fingerprint": fingerprint, "settings": settings, "done": [],
            "robust": None,
        }
        if state["robust"] is not None:
            robust = torch.tensor([c == "1" for c in state["robust"]], dtype=torch.bool, device=device)
        for entry in state["done"]:
            result.robust_after[entry["attack"]] = entry["robust"]
            result.seconds[entry["attack"]] = entry["seconds"]
            result.resumed.append(entry["attack"])

    for attack in attack_list:
        if attack in result.robust_after:
            continue
        start = time.perf_counter()
        index = torch.nonzero(robust).flatten()  # still-robust points, ascending as the package does
        if len(index):
            adversary.attacks_to_run = [attack]
            x_adv = run_attack_list(adversary, x[index], y[index], batch_size)
            with torch.no_grad():
                still = torch.cat([model(x_adv[i:i + batch_size]).argmax(1)
                                   for i in range(0, len(index), batch_size)]) == y[index]
            robust[index[~still]] = False
        result.robust_after[attack] = int(robust.sum())
        result.seconds[attack] = time.perf_counter() - start
        log.info("AutoAttack %s: %d of %d robust (%.1f s)", attack, result.robust_after[attack], len(x),
                 result.seconds[attack])
        if state is not None:
            state["done"].append({"attack": attack, "robust": result.robust_after[attack],
                                  "seconds": result.seconds[attack]})
            state["robust"] = "".join("1" if r else "0" for r in robust.tolist())
            atomic_write_text(path, json.dumps(state))
        if on_attack_done is not None:
            on_attack_done(attack, result.robust_after[attack])
    result.mask = robust
    return result
