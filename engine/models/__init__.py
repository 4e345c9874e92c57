"""Model registry: `build` an architecture by name, `load` a trained primary classifier.

`load` is the one entry point for tools (AutoAttack, RobustBench, torchattacks): whatever it is
given, it returns an eval-mode module mapping float NCHW inputs in [0, 1] to primary logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from engine.arch import parse_arch
from engine.models.aux_bn import has_aux_bn, is_aux_bn_key, separate_aux_bn
from engine.models.heads import CIFAR10_MEAN, CIFAR10_STD, NORMALIZATIONS, PER_CHANNEL, PER_IMAGE, MultiHeadNet
from engine.models.resnet import ResNet
from engine.models.wideresnet import WideResNet
from engine.run_dir import RunDir, read_json
from kernels.errors import InputError


def build(
    name: str,
    num_classes: int,
    aux_classes: Sequence[int] = (),
    *,
    dropout: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str = PER_CHANNEL,
    aux_bn: str = "shared",
) -> MultiHeadNet:
    """Builds an architecture by name (`wrn-28-10`, `wrn-34-10`, `wrn-16-10`, any `wrn-D-K`;
    `resnet-18`, `resnet-34`). `normalization`: per-channel with `mean` / `std` (default
    CIFAR-10's), or per-image standardisation (no mean / std: its buffers are 0 and 1).
    `aux_bn = "separate"` gives the auxiliary images BatchNorms of their own (`engine.models.aux_bn`)."""
    arch = parse_arch(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    if aux_bn not in ("shared", "separate"):
        raise ValueError(f"aux_bn must be shared or separate, got {aux_bn!r}")
    identity = normalization == PER_IMAGE
    mean = mean if mean is not None else (0.0, 0.0, 0.0) if identity else CIFAR10_MEAN
    std = std if std is not None else (1.0, 1.0, 1.0) if identity else CIFAR10_STD
    if arch.family == "resnet":
        if dropout:
            raise InputError(f"model {name!r} has no dropout (got {dropout}): dropout applies to WideResNets only")
        model: MultiHeadNet = ResNet(arch.depth, num_classes, aux_classes, mean, std)
    else:
        model = WideResNet(arch.depth, arch.width, num_classes, aux_classes, dropout, mean, std)
    model.set_normalization(normalization)
    return separate_aux_bn(model) if aux_bn == "separate" else model


def model_card(model: MultiHeadNet, name: str, class_names: Sequence[str] = (), **extra) -> dict:
    """What `load` needs to rebuild the primary classifier, plus facts for people (model.json)."""
    return {
        "architecture": name,
        "num_classes": model.num_classes,
        "class_names": list(class_names),
        "dropout": model.drop_rate,
        "mean": model.mu.flatten().tolist(),
        "std": model.sigma.flatten().tolist(),
        # per-channel: (x - mean) / std; per-image: each image standardised (mean 0, std 1 unused).
        "normalization": model.normalization,
        "input": "float NCHW in [0, 1]; normalisation is inside the model",
        # Only a checkpoint holds the auxiliary BatchNorms; model.safetensors never does.
        **({"aux_bn": "separate"} if has_aux_bn(model) else {}),
        **extra,
    }


def primary_state_dict(model: MultiHeadNet) -> dict[str, torch.Tensor]:
    """The weights of h_pri = f_pri . g: everything but the auxiliary heads and the auxiliary
    BatchNorms (model.aux_bn = separate), so it loads into the plain architecture."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("aux_fc.") and not is_aux_bn_key(k)}


def card_normalization(card: dict, where: str | Path = "model card") -> str:
    """The normalisation a model card says its weights expect; cards from before the per-image
    option record none and were per-channel."""
    kind = card.get("normalization", PER_CHANNEL)
    if kind not in NORMALIZATIONS:
        raise InputError(f"{where}: normalization = {kind!r} is not one of {', '.join(NORMALIZATIONS)} "
                         "(a card from a newer biamat-engine?): update biamat-engine, or fix the card")
    return kind


def model_file(path: str | Path) -> Path:
    """The weights file `load` reads for `path`: a run directory's model.safetensors, else the
    path itself (a model.safetensors or a checkpoint)."""
    path = Path(path)
    if path.is_dir():
        files = RunDir(path)
        if not files.weights.exists():
            raise FileNotFoundError(
                f"{path} has no {files.weights.name}: is it a finished run directory? "
                f"Pass a checkpoint ({files.best.name} / {files.last.name}) to load an unfinished run."
            )
        return files.weights
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def check_image_size(card: dict, size: int, model: str | Path, data: str | Path) -> None:
    """An InputError naming both files unless the classifier of `card` (at `model`) was trained on
    images of `data`'s `size`. The WideResNet pools adaptively, so any size runs, but a classifier
    knows only the size it was trained at (the trainer records it in the card; a card without
    one passes)."""
    trained = card.get("image_size")
    if trained is not None and int(trained) != size:
        raise InputError(f"{model} was trained on {trained}x{trained} images, {data} holds {size}x{size}: "
                         f"prepare it at --size {trained}")


def load(path: str | Path, device: str | torch.device = "cpu") -> MultiHeadNet:
    """Loads the primary classifier from a run directory, a model.safetensors or a checkpoint."""
    return load_with_card(path, device)[0]


def load_with_card(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultiHeadNet, dict]:
    """`load`, plus the model card it was rebuilt from (architecture, classes, image_size, ...).
    Every file is checked before it is trusted (engine/models/files.py): a damaged or crafted one
    is an InputError naming it and the fix."""
    from engine.models.files import (build_from_card, check_card, load_guarded, read_torch_file, safetensors_shapes,
                                     tensor_dict)

    path = model_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        card_path = path.with_suffix(".json")
        if not card_path.exists():
            raise FileNotFoundError(f"{path} needs its model card {card_path} (architecture, classes)")
        card = read_json(card_path)
        model = build_from_card(card, card_path, weights=(safetensors_shapes(path), path))
        model.load_state_dict(load_guarded(lambda: load_file(str(path)), path))
    elif path.suffix == ".pt":
        ckpt = read_torch_file(path)
        if "model_card" not in ckpt or "model" not in ckpt:
            raise InputError(f"{path} is not a biamat-engine checkpoint (no model_card/model entries)")
        card = check_card(ckpt["model_card"], f"{path} (its model_card)")
        weights = tensor_dict(ckpt["model"], "model", path)
        model = build_from_card(card, f"{path} (its model_card)", aux=True,
                                weights=({k: tuple(v.shape) for k, v in weights.items()}, path))
        model.load_state_dict(weights)
    else:
        raise InputError(f"cannot load {path}: expected a run directory, .safetensors or .pt")
    return model.to(device).eval(), card
