"""Model registry: `build` an architecture by name, `load` a trained primary classifier.

`load` is the one entry point for tools (AutoAttack, RobustBench, torchattacks): whatever it is
given, it returns an eval-mode module mapping float NCHW inputs in [0, 1] to primary logits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch

from engine.models.wideresnet import CIFAR10_MEAN, CIFAR10_STD, WideResNet

_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")


def parse_arch(name: str) -> tuple[int, int]:
    """`wrn-28-10` -> (28, 10); anything else is an error naming the accepted form."""
    match = _WRN.match(name.strip().lower())
    if not match:
        raise ValueError(f"unknown model {name!r}: expected wrn-DEPTH-WIDTH, e.g. wrn-28-10, wrn-34-10, wrn-16-10")
    depth, width = int(match.group(1)), int(match.group(2))
    if (depth - 4) % 6 != 0 or depth < 10 or width < 1:
        raise ValueError(f"model {name!r}: WideResNet depth must be 6n+4 and at least 10 (10, 16, 22, 28, 34, ...) "
                         "and width >= 1")
    return depth, width


def build(
    name: str,
    num_classes: int,
    aux_classes: Sequence[int] = (),
    *,
    dropout: float = 0.0,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> WideResNet:
    """Builds an architecture by name (`wrn-28-10`, `wrn-34-10`, `wrn-16-10`, any `wrn-D-K`)."""
    depth, width = parse_arch(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return WideResNet(depth, width, num_classes, aux_classes, dropout, mean, std)


def model_card(model: WideResNet, name: str, class_names: Sequence[str] = (), **extra) -> dict:
    """What `load` needs to rebuild the primary classifier, plus facts for people (model.json)."""
    return {
        "architecture": name,
        "num_classes": model.num_classes,
        "class_names": list(class_names),
        "dropout": model.drop_rate,
        "mean": model.mu.flatten().tolist(),
        "std": model.sigma.flatten().tolist(),
        "input": "float NCHW in [0, 1]; normalisation is inside the model",
        **extra,
    }


def primary_state_dict(model: WideResNet) -> dict[str, torch.Tensor]:
    """The weights of h_pri = f_pri . g: everything but the auxiliary heads."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("aux_fc.")}


def _from_card(card: dict, aux_classes: Sequence[int] = ()) -> WideResNet:
    return build(
        card["architecture"], card["num_classes"], aux_classes,
        dropout=card.get("dropout", 0.0),
        mean=card.get("mean", CIFAR10_MEAN), std=card.get("std", CIFAR10_STD),
    )


def load(path: str | Path, device: str | torch.device = "cpu") -> WideResNet:
    """Loads the primary classifier from a run directory, a model.safetensors or a checkpoint."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"{path} has no model.safetensors: is it a finished run directory? "
                "Pass a checkpoint (best.pt / last.pt) to load an unfinished run."
            )
        path = path / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        card_path = path.with_suffix(".json")
        if not card_path.exists():
            raise FileNotFoundError(f"{path} needs its model card {card_path} (architecture, classes)")
        card = json.loads(card_path.read_text())
        model = _from_card(card)
        model.load_state_dict(load_file(str(path)))
    elif path.suffix == ".pt":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if "model_card" not in ckpt or "model" not in ckpt:
            raise ValueError(f"{path} is not a biamat-engine checkpoint (no model_card/model entries)")
        card = ckpt["model_card"]
        model = _from_card(card, card.get("aux_classes", ()))
        model.load_state_dict(ckpt["model"])
    else:
        raise ValueError(f"cannot load {path}: expected a run directory, .safetensors or .pt")
    return model.to(device).eval()
