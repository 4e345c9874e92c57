"""A run that starts from another run's weights: adversarial pre-training, then fine-tuning.

Hendrycks et al. (the paper's [17], Table 3 and Table 7) pre-train adversarially on one dataset
and fine-tune on the primary one. Appendix E: "The fine-tuning phase commenced from the best
checkpoint of the pre-training phase. We adversarially fine-tuned the entire layers of the
pre-trained model on the primary dataset", with the learning rate continuing from that
checkpoint's epoch (optim.schedule_offset = "global-step", owned by engine/schedule.py).

What a source hands over (`init.source`: a run directory, whose best.pt is read; a .pt
checkpoint; or a model.safetensors with its model.json):
- the trunk g, always: every convolution, every BatchNorm's weights and running statistics, and
  the normalisation the trunk was trained to see (the mu, sigma buffers, and per-image or
  per-channel as its card says), as a resumed run keeps its checkpoint's;
- the primary head f_pri with init.heads = keep, which needs the source's class count; `new`
  builds a fresh one (CIFAR-100's or ImageNet's 100 or 1000 classes never fit CIFAR-10's 10);
  `auto` keeps it exactly when the counts match;
- the auxiliary heads only with keep, and only when the source has heads of the same class
  counts in the same order (a continued run with the same auxiliary data); otherwise fresh ones.
  A head is a map onto one dataset's classes: a head of another size belongs to other data.
Never the optimiser's momentum, the step counter, omega or a loader position: a fine-tune is a
new run, with its own schedule position from schedule_offset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.arch import parse_arch
from engine.checkpoint import load_checkpoint
from engine.config import ConfigError, TrainConfig
from engine.models import card_normalization
from engine.models.aux_bn import with_aux_bn_from_primary
from engine.models.files import check_card, load_guarded, safetensors_shapes, tensor_dict
from engine.models.heads import MultiHeadNet
from engine.run_dir import RunDir, read_json
from engine.run_record import InitSource
from kernels.errors import InputError
from loaders.json_values import whole_number
from loaders.sources.base import sha256_files

log = logging.getLogger(__name__)

_HEADS = ("fc.", "aux_fc.")


@dataclass(frozen=True)
class Source:
    """The weights a run starts from, and the facts run.json records about them."""

    file: Path
    weights: dict[str, torch.Tensor]
    card: dict
    epoch: int
    """Epochs the source had trained when it was written; -1 when its card does not say."""
    sha256: str


def source_file(path: str | Path) -> Path:
    """The file `init.source` names: a run directory's best.pt, or the file itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init.source (--init-from) {path}: no such run directory or file; give a run "
                                "directory of `biamat-engine train`, a .pt checkpoint or a model.safetensors")
    if path.is_dir():
        best = RunDir(path).best
        if not best.exists():
            raise FileNotFoundError(f"init.source (--init-from) {path} holds no {best.name} (fine-tuning starts from "
                                    "the best checkpoint): has its first epoch finished? Give its "
                                    f"{RunDir(path).last.name} to start from the last one instead")
        return best
    if path.suffix not in (".pt", ".safetensors"):
        raise ConfigError(f"init.source (--init-from) {path}: expected a run directory, a .pt checkpoint "
                          "or a model.safetensors")
    return path


def read_source(path: str | Path) -> Source:
    """The weights and card of `init.source`, each file checked before it is trusted
    (engine/models/files.py); the shapes are checked against this run's model in `_transferred`."""
    file = source_file(path)
    if file.suffix == ".pt":
        state = load_checkpoint(file)
        if "model" not in state or "model_card" not in state:
            raise InputError(f"init.source {file} is not a biamat-engine checkpoint (no model/model_card entries)")
        card = check_card(state["model_card"], f"init.source {file} (its model_card)")
        weights, epoch = tensor_dict(state["model"], "model", file), state.get("epoch", -1)
    else:
        from safetensors.torch import load_file

        card_path = file.with_suffix(".json")
        if not card_path.exists():
            raise FileNotFoundError(f"init.source {file} needs its model card {card_path} (architecture, classes)")
        card = check_card(read_json(card_path), card_path)
        safetensors_shapes(file)  # a bad header is named before safetensors reads it
        weights, epoch = load_guarded(lambda: load_file(str(file)), file), card.get("epoch", -1)
    if not whole_number(epoch):
        raise InputError(f"init.source {file}: its epoch is {epoch!r}, expected a whole number; is it a biamat-engine model?")
    return Source(file=file.resolve(), weights=weights, card=card, epoch=epoch, sha256=sha256_files([file]))


def resolve_heads(heads: str, source_classes: int, classes: int, file: Path) -> str:
    """`auto` -> keep when the primary class counts match, else new; `keep` with other counts
    is an error naming both and the fix."""
    if heads == "auto":
        return "keep" if source_classes == classes else "new"
    if heads == "keep" and source_classes != classes:
        raise ConfigError(
            f"init.heads = keep: the primary head of {file} has {source_classes} classes, this run's primary "
            f"data has {classes}; use --init-heads new (a fresh head, the trunk still comes from the source)"
        )
    return heads


def _check_architecture(source: Source, name: str) -> None:
    theirs, ours = parse_arch(source.card["architecture"]), parse_arch(name)
    if theirs != ours:
        raise ConfigError(
            f"init.source {source.file} is a {source.card['architecture']}, this run builds {name} (model.name): "
            "fine-tuning reuses the whole trunk, so both need one architecture (family, depth and width); "
            f"give --model {source.card['architecture']}, or pre-train the architecture you want"
        )


def _transferred(model: MultiHeadNet, source: Source, heads: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The model's state with the source's trunk (and heads, as `heads` says) laid over it, and
    whether the auxiliary heads came along."""
    state = model.state_dict()
    wanted = [k for k in state if not k.startswith(_HEADS)]
    if heads == "keep":
        wanted += [k for k in state if k.startswith("fc.")]
    aux_keys = [k for k in state if k.startswith("aux_fc.")]
    same_aux = list(source.card.get("aux_classes", [])) == list(model.aux_classes)
    keep_aux = heads == "keep" and bool(aux_keys) and same_aux and all(k in source.weights for k in aux_keys)
    if keep_aux:
        wanted += aux_keys
    elif heads == "keep" and aux_keys:
        log.info("init.source %s has auxiliary heads of %s classes (this run: %s): the auxiliary heads start "
                 "fresh", source.file, source.card.get("aux_classes", []), list(model.aux_classes))
    weights = with_aux_bn_from_primary(wanted, source.weights)  # model.aux_bn = separate from a shared source
    bad = [k for k in wanted if k not in weights or weights[k].shape != state[k].shape]
    if bad:
        raise InputError(f"init.source {source.file} lacks or has other shapes for {', '.join(bad[:3])}"
                         + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                         + ": it does not hold this architecture's weights")
    return {**state, **{k: weights[k] for k in wanted}}, keep_aux


def start_from_source(model: MultiHeadNet, cfg: TrainConfig) -> tuple[InitSource, str]:
    """Loads `cfg.init.source` into the freshly built `model` as the module docstring says.
    Returns the source as run.json records it (the file read, its epoch and sha256, keep or
    new: engine/run_record.py) and where the model's normalisation now comes from."""
    init = cfg.init
    source = read_source(init.source)
    if cfg.optim.schedule_offset == "global-step" and source.epoch < 0:
        raise ConfigError(
            f'optim.schedule_offset = "global-step" continues the schedule from the source\'s epoch, and the card '
            f"of {source.file} does not give one; start from the run's best.pt, or set optim.schedule_offset = \"none\""
        )
    _check_architecture(source, cfg.model.name)
    heads = resolve_heads(init.heads, int(source.card["num_classes"]), model.num_classes, source.file)
    state, kept_aux = _transferred(model, source, heads)
    built = model.load_trained(state, card_normalization(source.card, source.file))
    normalization = f"{source.card.get('normalization_source', 'the source')}, through init.source {source.file}"
    if built is not None:
        log.warning("init.source %s normalises with %s, not the %s this run's config gives; the trunk "
                    "keeps the normalisation it was trained with", source.file, model.describe_normalization(), built)
    log.info("started from %s (epoch %d, sha256 %s): trunk, %s primary head%s", source.file, source.epoch,
             source.sha256[:12], "its" if heads == "keep" else "a new", ", its auxiliary heads" if kept_aux else "")
    return InitSource(file=str(source.file), epoch=source.epoch, sha256=source.sha256, heads=heads), normalization
