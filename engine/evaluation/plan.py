"""What `biamat-engine eval` runs (`EvalPlan`), checked before anything is loaded, and the eps
and attack step a model's run asks for, resolved once (`EvalPlan.resolved`): every caller (eval,
the studies, the demo) hands over what it was given and reads back concrete values with their
sources."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from engine.evaluation.autoattack_runner import AA_ATTACKS, AA_VERSIONS
from engine.evaluation.backends import BACKENDS
from engine.evaluation.report import parse_eps
from engine.evaluation.robust import parse_attack
from engine.run_dir import RunDir, read_json
from kernels.errors import InputError

DEFAULT_EPS = 8 / 255
DEFAULT_STEP_SIZE = 2 / 255


@dataclass(kw_only=True)
class EvalPlan:
    """What `biamat-engine eval` runs: which attacks, at which eps, on which backend and device.
    (The training run's per-epoch held-out check is `engine.config.EpochEvalConfig`.)"""

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
    eps: float | None = None
    """L-inf radius; None: the run's (`resolve_eps`: its attack.eps, else the card's, else 8/255)."""
    step_size: float | None = None
    """PGD/CW step; None takes the run's (`resolve_step_size`: its eval.step_size, else 2/255)."""
    eps_source: str = "option"
    step_size_source: str = "option"
    """Where eps and the step came from (`resolved` fills them in): the option, a run's file, or the default."""
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
            raise InputError("no attacks to run: pass e.g. --attacks clean,pgd100,cw100,aa")
        for name in self.attacks:
            if name != "aa":
                parse_attack(name)
        if self.aa_attacks:
            self.aa_version = "custom"
        if self.aa_version not in AA_VERSIONS:
            raise InputError(f"unknown AutoAttack version {self.aa_version!r}: expected one of {', '.join(AA_VERSIONS)}")
        unknown = [a for a in self.aa_attacks if a not in AA_ATTACKS]
        if unknown:
            raise InputError(f"unknown AutoAttack attack(s) {', '.join(unknown)}: expected some of {', '.join(AA_ATTACKS)}")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.eps is not None and not 0 <= self.eps <= 1:
            raise InputError(f"eps must lie in [0, 1], got {self.eps}")
        if self.step_size is not None and not 0 < self.step_size <= 1:
            raise InputError(f"step size must lie in (0, 1], got {self.step_size}")
        if self.batch_size < 1 or self.restarts < 1 or (self.n is not None and self.n < 1):
            raise InputError("batch_size, restarts and n must be positive")

    def resolved(self, model_path: str | Path | None) -> "EvalPlan":
        """This plan with eps and step size concrete: a value given stays ("option"); one left out is
        the run's that `model_path` names (its config.toml, else its model card), else the default."""
        eps, eps_source = (self.eps, self.eps_source) if self.eps is not None else resolve_eps(model_path, None)
        step, step_source = ((self.step_size, self.step_size_source) if self.step_size is not None
                             else resolve_step_size(model_path, None))
        return dataclasses.replace(self, eps=eps, eps_source=eps_source, step_size=step, step_size_source=step_source)


def _from_run(model_path: str | Path | None, section: str, key: str, card_key: str) -> tuple[float, str] | None:
    """`section.key` of the run's config.toml, else `card_key` of the model card, with where it
    came from; None when neither is there (or no model is named: images evaluated in memory)."""
    if model_path is None:
        return None
    path = Path(model_path)
    files = RunDir.of(path)
    if files.config.exists():
        return getattr(getattr(files.read_config(), section), key), f"{files.config} [{section}] {key}"
    card = files.card if path.is_dir() else path.with_suffix(".json")
    if card.exists():
        from engine.models.files import check_card  # a damaged card is named before a field of it is read

        value = check_card(read_json(card), card).get(card_key)
        if value is not None:
            return parse_eps(value), f"{card} {card_key}"
    return None


def resolve_eps(model_path: str | Path | None, explicit: str | float | None) -> tuple[float, str]:
    """eps and where it came from: the option, the run's config.toml [attack] eps, the model card's
    `eps`, or the 8/255 default."""
    if explicit is not None:
        return parse_eps(explicit), "option"
    return _from_run(model_path, "attack", "eps", "eps") or (DEFAULT_EPS, "default")


def resolve_step_size(model_path: str | Path | None, explicit: str | float | None) -> tuple[float, str]:
    """The PGD/CW step and where it came from: the option, the run's config.toml [eval] step_size
    (2/255 for the AT presets, 0.003 for TRADES), the model card's `eval_step_size`, or 2/255.
    A run written before eval.step_size existed reads the 2/255 default from its config.toml."""
    if explicit is not None:
        return parse_eps(explicit), "option"
    return _from_run(model_path, "eval", "step_size", "eval_step_size") or (DEFAULT_STEP_SIZE, "default")
