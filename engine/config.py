"""The one configuration tree of a run: built from a preset or TOML plus overrides, stored with it.

Each field carries its documentation; `__post_init__` checks values so a bad setting fails at
start-up with the field's name, not hours later. `resolve_runtime` fills the `auto` fields from
the device once, and the resolved tree is what `config.toml` and every checkpoint record.

Files. A preset (engine/presets/NAME.toml) or a file given with --config may start with
`base = "<preset name>"`: its sections are then laid over that preset's, key by key, and the
base may have a base of its own. So a file that changes two settings of a paper run reads

    base = "cifar10-at"
    [method]
    pi = 0.5

An unknown base or a chain that loops is an error naming the file. Numbers may be written as the
paper writes them: a string such as `eps = "8/255"` is divided exactly (`parse_number`), in
files, in `--set` overrides and in lists alike. `config.toml` holds the resolved tree with plain
floats, and reads back to the same tree.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, get_args, get_origin, get_type_hints

from kernels.errors import InputError


class ConfigError(InputError):
    """A configuration value or file is wrong; the message names the key and the fix."""


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name} = {value!r}: expected one of {', '.join(map(str, choices))}")


def _check_range(section: str, name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{section}.{name} = {value!r}: expected a value in {bounds}")


def setting(default: Any, *, resumable: bool = False, flag: str | None = None) -> Any:
    """A field with the facts other parts ask of it. `resumable`: `--resume` may change it (it
    says how or how long a run goes, not what it trains; the reasons in engine/resume.py), every
    other field is fixed once a run has started. `flag`: the `train` option that sets it, besides
    `--set section.key=value`."""
    return field(default=default, metadata={"resumable": resumable, "flag": flag})


@dataclass(kw_only=True)
class DataConfig:
    primary: str = setting("shapes:primary", flag="--primary")
    """Primary training data: a .beton path, a .npz, or a built-in spec such as `shapes:primary`."""
    aux: list[str] = field(default_factory=list)
    """Auxiliary datasets (one head each); empty means plain AT/TRADES."""
    test: str = setting("", flag="--test")
    """Held-out data for the per-epoch robust accuracy; empty uses the primary spec's test split."""
    loader: str = setting("resident", resumable=True, flag="--loader")
    """Loader backend: resident (device memory), ffcv or dali."""
    batch_size: int = 128
    """Primary samples per step."""
    aux_batch_size: int = 128
    """Auxiliary samples per step, split evenly between the auxiliary datasets."""
    drop_last: bool = False
    """Drop the last incomplete primary batch of each epoch."""
    num_workers: int = setting(4, resumable=True)
    """Worker threads/processes for the ffcv and dali backends."""

    def __post_init__(self) -> None:
        _check_choice("data", "loader", self.loader, ("resident", "ffcv", "dali"))
        _check_range("data", "batch_size", self.batch_size, 1)
        _check_range("data", "aux_batch_size", self.aux_batch_size, 0)
        if self.aux and self.aux_batch_size < len(self.aux):
            raise ConfigError(
                f"data.aux_batch_size = {self.aux_batch_size} is smaller than the {len(self.aux)} "
                "auxiliary datasets: each needs at least one sample per step"
            )


@dataclass(kw_only=True)
class ModelConfig:
    name: str = setting("wrn-28-10", flag="--model")
    """Architecture, `wrn-DEPTH-WIDTH` (wrn-28-10 for AT, wrn-34-10 for TRADES, wrn-16-10 on ImgNet100)
    or `resnet-18` (the CIFAR ResNet-18 of Appendix B; also resnet-34)."""
    dropout: float = 0.0
    """Dropout inside each residual block (WideResNets only)."""
    normalization: str = "primary"
    """What the model does to its [0, 1] inputs, inside it (recorded in model.json): per-channel
    mean and std buffers from `primary` (the primary training data's own statistics, which
    `prepare` writes into its manifest), `cifar10` (CIFAR-10's constants whatever the data: what
    the engine did at first) or `none` (mean 0, std 1: the reference TRADES code feeds [0, 1]
    images as they are); or `per-image` (each image minus its mean, over max(std, 1/sqrt(N)) in
    0-255 pixel units: the reference AT code's tf.image.per_image_standardization of its 0-255
    images)."""

    aux_bn: str = "shared"
    """BatchNorm of the auxiliary images (an engine option beyond the paper, docs/beyond-the-paper.md):
    `shared` (the reference: one BatchNorm over [x_pri; x_aux], statistics mixed) or `separate`
    (every BatchNorm keeps a second set of statistics and affine parameters, `*.aux_bn.*`, that
    normalises the auxiliary rows of each combined batch, in the attack, the scoring and the loss
    pass alike). Evaluation and export use the primary's; export drops the auxiliary set."""

    def __post_init__(self) -> None:
        from engine.arch import parse_arch

        _check_choice("model", "normalization", self.normalization, ("primary", "cifar10", "none", "per-image"))
        _check_choice("model", "aux_bn", self.aux_bn, ("shared", "separate"))
        try:
            arch = parse_arch(self.name)
        except ValueError as err:
            raise ConfigError(f"model.name: {err}") from None
        _check_range("model", "dropout", self.dropout, 0.0, 0.99)
        if self.dropout and arch.family != "wrn":
            raise ConfigError(f"model.dropout = {self.dropout}: {self.name} has no dropout; set it to 0")


@dataclass(kw_only=True)
class InitConfig:
    source: str = setting("", flag="--init-from")
    """Start this run from another run's weights (pre-training -> fine-tuning, paper Table 3 and
    Appendix E; `train --init-from`): a run directory (its best.pt, where the paper's fine-tuning
    starts), a .pt checkpoint, or a model.safetensors beside its model.json. Empty: from scratch.
    Read once, when the run starts (engine/init_from.py); config.toml records it as given (made
    absolute), RUN_DIR/run.json the file read, its epoch and sha256 (engine/run_record.py), and
    a resumed run continues its own checkpoint, never the source."""
    heads: str = setting("auto", flag="--init-heads")
    """The primary head f_pri: `keep` (the source's, which needs the same class count), `new` (a
    fresh one) or `auto` (keep when the class counts match, else new; run.json records which).
    Auxiliary heads come along only with keep and the same auxiliary class counts."""

    def __post_init__(self) -> None:
        _check_choice("init", "heads", self.heads, ("auto", "keep", "new"))


@dataclass(kw_only=True)
class AttackConfig:
    eps: float = 8 / 255
    """L-inf radius of the training attack (8/255 for AT, 0.031 for TRADES)."""
    step_size: float = 2 / 255
    """PGD step size (2/255 for AT, 0.007 for TRADES)."""
    steps: int = 10
    """PGD steps of the training attack."""
    bn_stats: str = "step"
    """AT only: what the attack's forwards do to the BatchNorm running statistics. `step` (the
    reference code): the attack normalises with batch statistics but leaves the running
    statistics alone, so they move once per training step, from the training forward on the
    adversarial batch. `every_forward`: the attack runs in plain train mode and every attack
    forward updates them too (PGD-10: 11 updates per step instead of 1).
    The eval-mode model (omega, routing, evaluation, the exported model) sees these statistics.
    TRADES attacks in eval mode whatever this says (2 updates per step, clean and adversarial)."""

    def __post_init__(self) -> None:
        _check_choice("attack", "bn_stats", self.bn_stats, ("step", "every_forward"))
        _check_range("attack", "eps", self.eps, 0.0, 1.0)
        _check_range("attack", "step_size", self.step_size, 0.0, 1.0)
        _check_range("attack", "steps", self.steps, 0)


@dataclass(kw_only=True)
class MethodConfig:
    name: str = setting("at", flag="--method")
    """Training objective: `at` (Madry PGD adversarial training), `trades`, or `standard` (no
    attack: the AT loss on clean inputs, with the same auxiliary modes; the paper's Appendix B
    and C runs). The attack section still sets the eps of the per-epoch robust check and of eval."""
    aux_mode: str = setting("biamat", flag="--aux-mode")
    """How auxiliary samples are used: biamat (confidence routing), labels (all high), uniform
    (all low: OAT), none (auxiliary data ignored), pseudo (Carmon et al.'s RST, the paper's
    Table 3 / Table 7: auxiliary samples trained as primary samples through f_pri with their
    pseudo-labels, each batch half primary and half pseudo-labelled when aux_batch_size equals
    batch_size; no auxiliary head, routing, omega or alpha; the auxiliary data must have the
    primary classes, as `biamat-engine pseudo-label` writes it, and metrics' loss_pri then
    covers both halves), oracle (beyond the paper, synthetic data only: biamat with the
    confidence test replaced by the data's own record of which auxiliary classes are related to
    the primary ones, related high and unrelated low, warm-up included; it bounds what any
    confidence gate could gain; refused for data that records no such groups)."""
    alpha: float = setting(1.0, flag="--alpha")
    """Weight of the auxiliary loss (paper Table 12)."""
    pi: float = setting(0.55, flag="--pi")
    """Threshold factor: omega = pi * mean max-softmax of a clean primary batch (Table 12)."""
    warmup_epochs: int = 5
    """biamat mode only: epochs before omega is set, in which auxiliary samples are attacked and
    forwarded as high samples with zero loss weight. Warm-up belongs to the selection strategy:
    in labels, uniform and pseudo mode the auxiliary loss has weight alpha from the first step (the
    reference's OAT-like mode sets its warm-up to 0; the paper's Table 1 protocol has none), and
    the resolved config.toml of such a run (and of a run without auxiliary data) records 0."""
    beta: float = 6.0
    """TRADES robustness weight."""
    threshold: str = "frozen"
    """`frozen` (omega fixed at the end of warm-up, as the paper) or `ema` (re-estimated every
    step, an extension)."""
    ema_momentum: float = 0.99
    """For threshold = ema: omega <- m * omega + (1 - m) * pi * mean confidence of the step."""
    omega_when: str = "warmup"
    """biamat mode only (an engine option beyond the paper, docs/beyond-the-paper.md): when omega is
    fixed. `warmup` (the paper): on the first step after warmup_epochs. `accuracy`: the warm-up
    lasts at least warmup_epochs and until an epoch end where the primary head's clean accuracy
    on a held-out slice of the primary *training* data (omega_holdout samples, carved out at start
    and never trained on) reaches omega_accuracy, or until omega_latest_epoch at the latest;
    omega is then computed the paper's way on the next step."""
    omega_accuracy: float = 0.5
    """For omega_when = accuracy: the held-out clean accuracy (0-1) that ends the warm-up."""
    omega_latest_epoch: int = 10
    """For omega_when = accuracy: the epoch after which the warm-up ends whatever the accuracy."""
    omega_holdout: int = 1000
    """For omega_when = accuracy: primary training samples held out (drawn from runtime.seed) to
    measure that accuracy on; they are left out of the training batches."""
    high_loss: str = "trades"
    """TRADES only: loss on high-confidence auxiliary samples: `trades` (CE + beta*KL) or `ce`
    (plain adversarial CE, the paper's choice with a CIFAR-100 primary, Appendix E)."""

    def __post_init__(self) -> None:
        _check_choice("method", "name", self.name, ("at", "trades", "standard"))
        _check_choice("method", "aux_mode", self.aux_mode,
                      ("biamat", "labels", "uniform", "none", "pseudo", "oracle"))
        _check_choice("method", "threshold", self.threshold, ("frozen", "ema"))
        _check_choice("method", "high_loss", self.high_loss, ("trades", "ce"))
        _check_choice("method", "omega_when", self.omega_when, ("warmup", "accuracy"))
        _check_range("method", "omega_accuracy", self.omega_accuracy, 0.0, 1.0)
        _check_range("method", "omega_latest_epoch", self.omega_latest_epoch, 0)
        _check_range("method", "omega_holdout", self.omega_holdout, 1)
        _check_range("method", "alpha", self.alpha, 0.0)
        _check_range("method", "pi", self.pi, 0.0)
        _check_range("method", "warmup_epochs", self.warmup_epochs, 0)
        _check_range("method", "beta", self.beta, 0.0)
        _check_range("method", "ema_momentum", self.ema_momentum, 0.0, 1.0)


@dataclass(kw_only=True)
class OptimConfig:
    epochs: int = setting(100, resumable=True, flag="--epochs")
    """Training epochs; one epoch is one pass over the primary data."""
    lr: float = 0.1
    """Peak learning rate of SGD."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum."""
    weight_decay: float = 2e-4
    """L2 weight decay (2e-4 for AT, 5e-4 for TRADES)."""
    weight_decay_on: str = "all"
    """Which parameters weight decay applies to: `all` (SGD weight_decay on every parameter, as
    the reference TRADES code) or `weights` (convolution and linear weights only, not BatchNorm
    scales and shifts nor biases, as the reference AT code's `weight_decay * sum(l2_loss(kernel))`,
    whose gradient is weight_decay * w: the same update as SGD weight_decay on those weights)."""
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.9])
    """Completed epochs after which the LR is multiplied by `gamma`; values below 1 are fractions
    of `epochs`. A milestone M decays the LR from the first step after M epochs, so epochs
    1..M (counted from 1) train at the rate before it: [0.6, 0.9] of 100 epochs trains epochs
    61-90 at 0.01, as the reference AT (decay after 60% and 90% of its steps); the paper's
    TRADES "decay at the 100th and 105th epoch", which the reference trains at the decayed rate
    (adjust_learning_rate with 1-based epochs), is [99, 104]."""
    gamma: float = 0.1
    """LR decay factor at each milestone."""
    lr_warmup_epochs: float = 0.0
    """Linear LR warm-up from 0 over this many epochs (0: none, as the paper)."""
    schedule_offset: str = "none"
    """Where the schedule starts for a run with init.source: `none` (at epoch 0, as any run) or
    `global-step` (at the source's epoch, which the trainer reads from it and run.json records:
    the paper's Appendix E fine-tuning, "the learning rate was set according to the global step
    over the pre-training and fine-tuning phase"). The milestones then count global epochs
    (fractions are of the source's epoch + epochs); this run still trains `epochs` epochs."""

    def __post_init__(self) -> None:
        _check_range("optim", "epochs", self.epochs, 1)
        _check_range("optim", "lr", self.lr, 0.0)
        _check_range("optim", "momentum", self.momentum, 0.0, 1.0)
        _check_range("optim", "weight_decay", self.weight_decay, 0.0)
        _check_choice("optim", "weight_decay_on", self.weight_decay_on, ("all", "weights"))
        _check_range("optim", "gamma", self.gamma, 0.0, 1.0)
        _check_range("optim", "lr_warmup_epochs", self.lr_warmup_epochs, 0.0)
        _check_choice("optim", "schedule_offset", self.schedule_offset, ("none", "global-step"))
        for m in self.milestones:
            _check_range("optim", "milestones", m, 0.0)

    def milestone_epochs(self, schedule_epochs: int | None = None) -> list[float]:
        """The milestones in epochs; fractions are of `schedule_epochs` (default: `epochs`; a
        fine-tune that continues its source's schedule passes the global length)."""
        total = self.epochs if schedule_epochs is None else schedule_epochs
        return sorted(m * total if m < 1 else m for m in self.milestones)


COMPILE_MODES = ("reduce-overhead", "max-autotune")
"""torch.compile modes `runtime.compile` may name besides on (torch's default mode) and off."""


@dataclass(kw_only=True)
class RuntimeConfig:
    device: str = setting("auto", resumable=True, flag="--device")
    """`auto` (cuda when there is one), `cpu`, `cuda` or `cuda:N`."""
    precision: str = setting("auto", resumable=True)
    """`auto` (bf16 on GPUs that have it, fp16 + GradScaler on V100, fp32 on CPU), fp32, bf16, fp16."""
    compile: str = setting("auto", resumable=True)
    """torch.compile the model trunk: `auto` (on CUDA), `on`, `off`, or `on` with one of
    torch.compile's modes: `reduce-overhead` (CUDA graphs: each compiled variant of the trunk is
    captured once and replayed, which removes the per-kernel launch cost of small batches; torch
    skips the capture for variants that update BatchNorm buffers) or `max-autotune` (also searches
    matmul/convolution configurations: minutes of compile). Off by default until `bench step`
    has measured them on the GPU (docs/benchmarks.md)."""
    compile_dynamic: str = setting("auto", resumable=True)
    """Batch shapes as the compiled trunk traces them (torch.compile's `dynamic`): `false` treats
    each shape as a constant (the fastest kernels, one compile per shape: pair it with
    data.drop_last = true, so every training batch has one shape); `true` traces a symbolic batch
    size from the first call (one compile, more general kernels); `auto` is `false` when the trunk
    is compiled and data.drop_last is true, else torch's automatic choice (static first, symbolic
    once a shape changes), which the resolved config records as `auto`."""
    channels_last: bool = setting(True, resumable=True)
    """Keep activations in NHWC (channels_last), the layout tensor cores want."""
    cudnn_benchmark: bool = setting(False, resumable=True)
    """CUDA only: let cuDNN time its convolution algorithms on the first batch of each shape and
    keep the fastest (`torch.backends.cudnn.benchmark`). Off by default until `bench step` has
    measured it; ignored under `deterministic`, which needs cuDNN's deterministic choice."""
    kernels: str = setting("auto", resumable=True)
    """Kernel implementation for routing, the PGD update and batch augmentation: torch, numba,
    triton, or auto: triton on CUDA; on a CPU, per kernel, the one `bench kernels` measured faster
    there (kernels.dispatch.CPU_AUTO, after docs/benchmarks.md). The resolved config records the
    implementation auto ran, or `auto` where it differs per kernel."""
    seed: int = setting(0, flag="--seed")
    """Seeds the model initialisation, the data order, the augmentation and the attacks."""
    deterministic: bool = setting(False, resumable=True)
    """Ask torch for deterministic algorithms (slower on GPUs)."""
    sync_bn: bool = False
    """Under torchrun, BatchNorm as SyncBatchNorm: statistics over the global batch instead of each
    GPU's shard (GPUs only; off by default, as the paper's single-GPU runs have nothing to sync)."""
    tensorboard: bool = setting(False, resumable=True)
    """Also write each epoch's metrics.jsonl scalars (losses, held-out accuracies, lr, omega, share
    routed high, times) as TensorBoard event files in RUN_DIR/tensorboard/ (rank 0; needs the
    tensorboard package: pip install tensorboard)."""

    def __post_init__(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"runtime.device = {self.device!r}: expected auto, cpu, cuda or cuda:N")
        _check_choice("runtime", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_choice("runtime", "compile", self.compile, ("auto", "on", "off") + COMPILE_MODES)
        _check_choice("runtime", "compile_dynamic", self.compile_dynamic, ("auto", "true", "false"))
        _check_choice("runtime", "kernels", self.kernels, ("auto", "torch", "numba", "triton"))


@dataclass(kw_only=True)
class EpochEvalConfig:
    """The [eval] section: the per-epoch held-out check that selects the best model during
    training (the `eval` command's own plan is engine.evaluation.plan.EvalPlan)."""

    every: int = setting(1, resumable=True)
    """Evaluate every this many epochs (and always after the last one)."""
    n: int = 1000
    """Size of the fixed held-out subset for the per-epoch clean and robust accuracy."""
    steps: int = 20
    """PGD steps of the per-epoch robust accuracy (model selection)."""
    step_size: float = 2 / 255
    """Step of this run's evaluation attacks (at eps = attack.eps): the per-epoch PGD and the
    default of `biamat-engine eval`'s PGD-K and CW-K (its --step-size overrides it). 2/255 for
    AT, as the reference AT evaluation; 0.003 for TRADES, as the reference TRADES evaluation."""
    batch_size: int = setting(256, resumable=True)
    """Batch size of the per-epoch evaluation."""

    def __post_init__(self) -> None:
        _check_range("eval", "every", self.every, 1)
        if not 0.0 < self.step_size <= 1.0:
            raise ConfigError(f"eval.step_size = {self.step_size!r}: expected a value in (0, 1]")
        _check_range("eval", "n", self.n, 1)
        _check_range("eval", "steps", self.steps, 0)
        _check_range("eval", "batch_size", self.batch_size, 1)


@dataclass(kw_only=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EpochEvalConfig = field(default_factory=EpochEvalConfig)

    def __post_init__(self) -> None:
        _check_finite(self)
        if self.method.warmup_epochs >= self.optim.epochs and self.selects:
            raise ConfigError(
                f"method.warmup_epochs = {self.method.warmup_epochs} leaves no epoch after warm-up "
                f"(optim.epochs = {self.optim.epochs}): the threshold would never be set"
            )
        if self.method.omega_when == "accuracy" and self.selects:
            m = self.method
            if not m.warmup_epochs <= m.omega_latest_epoch < self.optim.epochs:
                raise ConfigError(
                    f"method.omega_latest_epoch = {m.omega_latest_epoch}: expected a value from "
                    f"method.warmup_epochs ({m.warmup_epochs}) to optim.epochs - 1 ({self.optim.epochs - 1}), "
                    "so the warm-up ends before the run does"
                )
        if self.model.aux_bn == "separate" and (not self.uses_aux or self.pseudo_labelled):
            raise ConfigError(
                'model.aux_bn = "separate" normalises routed auxiliary images, and this run has none '
                f"(aux_mode {self.method.aux_mode}, {len(self.data.aux)} auxiliary datasets): "
                'set model.aux_bn = "shared"'
            )
        if self.model.aux_bn == "separate" and self.runtime.sync_bn:
            raise ConfigError('runtime.sync_bn converts BatchNorm to SyncBatchNorm, which has no auxiliary '
                              'set: use model.aux_bn = "shared" with it, or drop runtime.sync_bn')
        if self.optim.schedule_offset == "global-step" and not self.init.source:
            raise ConfigError(
                'optim.schedule_offset = "global-step" continues the schedule of init.source, which is empty: '
                'give the pre-trained run with --init-from, or set optim.schedule_offset = "none"'
            )

    @property
    def uses_aux(self) -> bool:
        return bool(self.data.aux) and self.method.aux_mode != "none"

    @property
    def selects(self) -> bool:
        """Whether a selection runs (biamat mode, or its oracle, with auxiliary data): the only
        case in which method.warmup_epochs and method.omega_when mean anything."""
        return self.uses_aux and self.method.aux_mode in ("biamat", "oracle")

    @property
    def pseudo_labelled(self) -> bool:
        """Whether the auxiliary data trains as pseudo-labelled primary data (aux_mode pseudo):
        it then needs the primary classes, and the model no auxiliary heads."""
        return self.uses_aux and self.method.aux_mode == "pseudo"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _build(cls, data, "")


def _check_finite(config: "TrainConfig") -> None:
    """NaN or inf in any number of any section is refused, naming the key: a NaN eps would
    train to the end with robust accuracy equal to clean, and NaN compares false with every
    range check."""
    for section in fields(config):
        for f in fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), f.name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"{section.name}.{f.name} = {value!r}: expected a finite number")


def resolve_warmup(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with method.warmup_epochs = 0 and method.omega_when = "warmup" where no selection
    runs (labels, uniform, pseudo, none, or no auxiliary data), so the resolved config says what
    the run does; unchanged otherwise."""
    if cfg.selects or (cfg.method.warmup_epochs == 0 and cfg.method.omega_when == "warmup"):
        return cfg
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, warmup_epochs=0, omega_when="warmup"))


def _settings() -> list[tuple[str, Any]]:
    """("section.key", field) of every field of the tree."""
    sections = get_type_hints(TrainConfig)
    return [(f"{name}.{f.name}", f) for name, kind in sections.items() if dataclasses.is_dataclass(kind)
            for f in fields(kind)]


def resumable_keys() -> frozenset[str]:
    """"section.key" of every field marked `resumable`: what `--resume` may change."""
    return frozenset(key for key, f in _settings() if f.metadata.get("resumable"))


def flag_keys() -> dict[str, str]:
    """{`train` option: "section.key"} of every field a dedicated option sets (`setting(flag=...)`)."""
    return {f.metadata["flag"]: key for key, f in _settings() if f.metadata.get("flag")}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A config tree as {"section.key": value} (what `--set` names and messages quote)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_number(text: str | float) -> float:
    """`0.031`, `2e-4` or a fraction such as `8/255` or `0.5/255` -> float.

    The one reader of numbers written as text, for the config and for eval's eps and step size.
    A fraction is divided exactly and rounded once, so "8/255" gives the same float as 8 / 255.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    numerator, slash, denominator = str(text).strip().partition("/")
    try:
        if not slash:
            return float(numerator)
        if "/" in denominator:
            raise ValueError
        return float(Fraction(numerator) / Fraction(denominator))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"cannot read {text!r} as a number: expected a decimal such as 0.031 "
                         "or a fraction such as 8/255") from None


def _parse_scalar(text: str, kind: type, key: str) -> Any:
    """Parses an override's (or a TOML string's) text as the field's type."""
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return parse_number(text)
        return text
    except ValueError:
        hint = " (or a fraction such as 8/255)" if kind is float else ""
        raise ConfigError(f"{key} = {text!r}: expected a {kind.__name__}{hint}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        return [_coerce(v, item, key) for v in value]
    if isinstance(value, str) and hint is not str:
        return _parse_scalar(value, hint, key)
    if isinstance(value, bool) and hint is not bool:
        raise ConfigError(f"{key} = {value!r}: expected a {getattr(hint, '__name__', hint)}, not a boolean")
    if hint is float and isinstance(value, int):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{key} = {value!r}: expected a {hint.__name__}")
    return value


# Keys config.toml held before run.json (engine/run_record.py): facts the trainer found, not settings.
_PRODUCED_INIT_KEYS = frozenset({"source_epoch", "source_sha256"})


def split_produced(tree: dict) -> tuple[dict, dict]:
    """A run's recorded config tree (config.toml, a checkpoint's config) as settings only, and
    its [init] section as recorded when that also held the facts the trainer found: {} when it
    holds none. Every config.toml and checkpoint written before run.json has them (a run from
    scratch `source_epoch = -1`, `source_sha256 = ""`), so a run's own config is read without
    them rather than refused; engine/run_record.py turns them into the run's record."""
    init = tree.get("init")
    if not isinstance(init, dict) or not _PRODUCED_INIT_KEYS & set(init):
        return tree, {}
    return {**tree, "init": {k: v for k, v in init.items() if k not in _PRODUCED_INIT_KEYS}}, dict(init)


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    produced = sorted(unknown & _PRODUCED_INIT_KEYS) if prefix == "init." else []
    if produced:
        raise ConfigError(
            f"{', '.join(prefix + k for k in produced)}: not a setting; the trainer reads the source's epoch and "
            "sha256 when the run starts and records them in RUN_DIR/run.json. Delete these lines (a config.toml "
            "copied from a run written before run.json holds them)"
        )
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} in {where}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a table of settings")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


Overrides = Mapping[str, Any]
"""{"section.key": value}: a typed value (a float, a list of paths), or text parsed as the
field's type when the tree is built, as `--set` gives it."""


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`section.key=value` strings (`--set`, a study grid's settings) as Overrides; a later
    string for the same key wins, as on a command line."""
    parsed = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set method.pi=0.5")
        key, value = item.split("=", 1)
        if len(key.strip().split(".")) != 2:
            raise ConfigError(f"--set {item!r}: keys have the form section.key, e.g. optim.lr")
        parsed[key.strip()] = value
    return parsed


def apply_overrides(data: dict, overrides: Overrides | Iterable[str]) -> dict:
    """`data` (a nested dict) with each override set (values parsed when the tree is built);
    `section.key=value` strings are read by `parse_overrides` first."""
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"override {key!r}: keys have the form section.key, e.g. optim.lr")
        data.setdefault(parts[0], {})
        if not isinstance(data[parts[0]], dict):
            raise ConfigError(f"--set {f'{key}={value}'!r}: {parts[0]} is not a section")
        data[parts[0]][parts[1]] = list(value) if isinstance(value, tuple) else value
    return data


def preset_names() -> list[str]:
    folder = resources.files("engine") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(path: str | Path) -> dict:
    """A TOML file as written, its `base` not yet resolved."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # the latter: a binary file
        raise ConfigError(f"{path} is not valid TOML: {err}") from None


def _read_preset(name: str, wanted_by: str | None = None) -> dict:
    path = resources.files("engine") / "presets" / f"{name}.toml"
    # By name only: `base = "../../x"` would read any TOML file on the machine as a preset.
    if name not in preset_names() or not path.is_file():
        where = f"{wanted_by}: base = {name!r} is not a preset" if wanted_by else f"unknown preset {name!r}"
        raise ConfigError(f"{where}; available: {', '.join(preset_names())}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"preset {name!r} ({path}) is not valid TOML: {err}") from None


def resolve_base(data: dict, origin: str, chain: tuple[str, ...] = ()) -> dict:
    """`data` laid over the settings of its `base` preset (and that preset's base, and so on).

    A section present in both is merged key by key; a key of `data` replaces the base's (lists
    too). `origin` names the file in errors; `chain` holds the presets already on the way here.
    """
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f'{origin}: base = {base!r}: expected a preset name such as "cifar10-at"')
    if base in chain:
        raise ConfigError(f"{origin}: the base presets form a cycle: {' -> '.join(chain + (base,))}")
    below = resolve_base(_read_preset(base, wanted_by=origin), f"preset {base!r}", chain + (base,))
    merged = dict(below)
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(below.get(section), dict):
            merged[section] = {**below[section], **values}
        else:
            merged[section] = values
    return merged


def load_preset(name: str) -> dict:
    """The named preset with its base chain resolved (numbers may still be text such as "8/255")."""
    return resolve_base(_read_preset(name), f"preset {name!r}", (name,))


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Overrides | Iterable[str] = (),
    aux: list[str] | None = None,
) -> TrainConfig:
    """Preset or file (not both; a file may name a preset as its `base`), then overrides, then
    `aux` (a list: paths may hold commas) in place of data.aux when given, then validation."""
    if preset and file:
        raise ConfigError("give --preset or --config, not both")
    data = load_preset(preset) if preset else resolve_base(read_toml(file), str(file)) if file else {}
    return config_from_tree(data, overrides, aux)


def config_from_tree(data: dict, overrides: Overrides | Iterable[str] = (), aux: list[str] | None = None) -> TrainConfig:
    """A config tree (a preset or file as read) with overrides, then `aux` in place of data.aux
    when given, then validation."""
    data = apply_overrides(data, overrides)
    if aux is not None:
        data.setdefault("data", {})["aux"] = list(aux)
    return TrainConfig.from_dict(data)


def to_toml(config: TrainConfig) -> str:
    """The resolved tree as TOML (what config.toml holds): plain floats, read back exactly."""
    try:
        import tomli_w  # imported here: reading configs needs only the standard library
    except ImportError:
        raise ImportError("writing config.toml needs the tomli-w package: pip install tomli-w") from None
    return tomli_w.dumps(config.to_dict())
