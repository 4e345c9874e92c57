"""Reading model files that may be damaged or crafted: model cards, safetensors headers and torch
checkpoints. Everything is checked before anything is allocated for it, and every failure is an
InputError naming the file and the fix (exit 1 in the CLI), never a traceback or a request for
terabytes.

- A card's fields are checked for type and range, and the model it describes is built on the
  meta device first (no memory) to count its parameters.
- A safetensors header is parsed here (8-byte length, JSON) and its tensor names and shapes are
  compared with that meta model before safetensors reads any tensor.
- `torch.load` runs with weights_only=True; whatever it raises (a 0-byte file's bare EOFError,
  which click would print as "Aborted.", an unpickling error that advises weights_only=False)
  becomes one message that advises nothing unsafe.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Callable, Mapping

import torch

from kernels.errors import InputError
from loaders.json_values import finite_number, whole_number

MAX_CLASSES = 1_000_000
"""More classes than any image-classification set has (ImageNet-21k: 21,841); a card asking for
10^10 would otherwise allocate a head of terabytes."""
MAX_PARAMETERS = 2_000_000_000
"""8 GB of float32 weights, about 8 times the largest RobustBench WideResNet (wrn-70-16)."""
MAX_IMAGE_SIZE = 4096
MAX_HEADER_BYTES = 100 * 2**20
"""safetensors itself refuses headers over 100 MB."""

_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}

_RETRAIN = "train the model again, or export it again from its run directory (`biamat-engine export`)"


def check_card(card, where: str | Path) -> dict:
    """`card` itself when it is a model card `build_from_card` can rebuild from at a plausible
    size; otherwise an InputError naming `where`, the field, what was found and what is expected."""
    from engine.arch import parse_arch

    def bad(key: str, expected: str, found) -> InputError:
        shown = repr(found)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return InputError(f"{where}: model card field {key!r} is {shown}, expected {expected}; "
                          f"not a biamat-engine model card as written; {_RETRAIN}")

    if not isinstance(card, dict):
        raise InputError(f"{where}: not a biamat-engine model card (a JSON {type(card).__name__}, expected an object "
                         f"with architecture and num_classes); {_RETRAIN}")
    for key in ("architecture", "num_classes"):
        if key not in card:
            raise InputError(f"{where}: not a biamat-engine model card (it has no {key!r}); {_RETRAIN}")
    if not isinstance(card["architecture"], str):
        raise bad("architecture", "a name like wrn-28-10", card["architecture"])
    try:
        parse_arch(card["architecture"])
    except InputError as err:
        raise InputError(f"{where}: model card field 'architecture': {err}") from None
    classes = card["num_classes"]
    if not whole_number(classes) or not 1 <= classes <= MAX_CLASSES:
        raise bad("num_classes", f"a whole number from 1 to {MAX_CLASSES:,}", classes)
    aux = card.get("aux_classes", [])
    if not isinstance(aux, list) or len(aux) > 64 or not all(whole_number(c) and 1 <= c <= MAX_CLASSES for c in aux):
        raise bad("aux_classes", f"a list of class counts from 1 to {MAX_CLASSES:,}", aux)
    dropout = card.get("dropout", 0.0)
    if not finite_number(dropout) or not 0 <= dropout < 1:
        raise bad("dropout", "a number in [0, 1)", dropout)
    for key in ("mean", "std"):
        value = card.get(key, [0.5, 0.5, 0.5])
        if not isinstance(value, list) or len(value) != 3 or not all(finite_number(v) for v in value):
            raise bad(key, "3 finite numbers, one per RGB channel", value)
        if key == "std" and min(value) <= 0:
            raise bad(key, "3 positive numbers", value)
    names = card.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of strings", names)
    if names and len(names) != classes:
        raise InputError(f"{where}: the model card names {len(names)} classes but num_classes is {classes}; "
                         f"{_RETRAIN}")
    size = card.get("image_size")
    if size is not None and (not whole_number(size) or not 1 <= size <= MAX_IMAGE_SIZE):
        raise bad("image_size", f"a whole number of pixels from 1 to {MAX_IMAGE_SIZE}", size)
    return card


def build_from_card(card: dict, where: str | Path, aux: bool = False,
                    weights: tuple[Mapping[str, tuple[int, ...]], str | Path] | None = None):
    """The model `card` describes (checked by `check_card`), with its auxiliary heads when `aux`.
    It is built on the meta device first (no memory), so a card describing an implausibly large
    model, or `weights` = (the {name: shape} of a weights file, that file) of other shapes, is
    refused before a byte is allocated."""
    from engine.models import build, card_normalization

    check_card(card, where)
    normalization = card_normalization(card, where)
    aux_bn = card.get("aux_bn", "shared") if aux else "shared"  # only a checkpoint holds the auxiliary set
    if aux_bn not in ("shared", "separate"):
        raise InputError(f"{where}: aux_bn = {aux_bn!r}: expected shared or separate ({_RETRAIN})")

    def make():
        return build(card["architecture"], card["num_classes"], card.get("aux_classes", []) if aux else (),
                     dropout=card.get("dropout", 0.0), mean=card.get("mean"), std=card.get("std"),
                     normalization=normalization, aux_bn=aux_bn)  # no mean/std: build's default for the kind

    with torch.device("meta"):
        shapes = make()
    count = sum(p.numel() for p in shapes.parameters())
    if count > MAX_PARAMETERS:
        raise InputError(f"{where}: the card describes a {card['architecture']} with {card['num_classes']:,} classes, "
                         f"{count:,} parameters (more than {MAX_PARAMETERS:,}); is the card right? ({_RETRAIN})")
    if weights is not None:
        check_shapes(weights[0], shapes, weights[1], where)
    return make()


def check_shapes(found: Mapping[str, tuple[int, ...]], model: torch.nn.Module, file: str | Path,
                 card_where: str | Path) -> None:
    """An InputError naming `file` unless it holds exactly the tensors of `model`'s state dict,
    each of the model's shape (what the card at `card_where` describes)."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in wanted if k not in found]
    extra = [k for k in found if k not in wanted]
    other = [f"{k} is {list(found[k])} in the file, {list(wanted[k])} in the model"
             for k in wanted if k in found and tuple(found[k]) != wanted[k]]
    if not (missing or extra or other):
        return
    parts = ([f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")]
             if missing else [])
    parts += [f"unexpected {', '.join(extra[:3])}" + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")] if extra else []
    parts += other[:3]
    raise InputError(f"{file} does not hold the weights its card {card_where} describes ({'; '.join(parts)}): "
                     f"the weights and the card belong to different models; {_RETRAIN}")


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} from the header of the safetensors file at `path`, each tensor's bytes checked
    to lie inside the file; an InputError naming the file for a short, bad or huge header."""
    path = Path(path)
    size = path.stat().st_size
    fix = "export the model again, or give the run directory it came from"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: {size} bytes is too short for a safetensors file (truncated?); {fix}")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise InputError(f"{path}: its safetensors header claims {length:,} bytes, the file holds {size - 8:,} "
                             f"after the length (limit {MAX_HEADER_BYTES:,}): not a safetensors file, or truncated; {fix}")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: its safetensors header is not JSON ({type(err).__name__}); "
                         f"not a safetensors file, or damaged; {fix}") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: its safetensors header is not a JSON object; {fix}")
    data_bytes = size - 8 - length
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_BYTES
              and isinstance(entry.get("shape"), list) and all(whole_number(d) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(whole_number(o) for o in entry["data_offsets"]))
        if not ok:
            raise InputError(f"{path}: the header entry of tensor {name!r} is not dtype, shape, data_offsets; {fix}")
        begin, end = entry["data_offsets"]
        nbytes = math.prod(entry["shape"]) * _SAFETENSORS_BYTES[entry["dtype"]]
        if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
            raise InputError(f"{path}: tensor {name!r} claims bytes [{begin}, {end}) of a {data_bytes:,}-byte data "
                             f"section for {nbytes:,} bytes of data: truncated or damaged; {fix}")
        shapes[name] = tuple(entry["shape"])
    return shapes


def read_torch_file(path: str | Path, what: str = "checkpoint") -> dict:
    """`torch.load(path, weights_only=True)` on the CPU, as a dict; any failure is an InputError
    naming the file and the fix (and never advising weights_only=False)."""
    path = Path(path)
    fix = ("give a last.pt / best.pt written by `biamat-engine train`, or the run directory; a file cut short "
           "by a full disk or an interrupted copy needs copying again")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the {what} is empty (0 bytes); {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a crafted file can make torch raise anything
        reason = type(err).__name__
        if not isinstance(err, pickle.UnpicklingError):  # torch's text there advises unsafe loading
            first = (str(err).strip().splitlines() or [""])[0][:160]
            reason += f": {first}" if first else ""
        raise InputError(f"{path}: not a readable {what} ({reason}); {fix}") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: the {what} holds a {type(state).__name__}, expected a dict of training state; {fix}")
    return state


def tensor_dict(value, key: str, where: str | Path) -> dict[str, torch.Tensor]:
    """`value` when it is a {name: tensor} dict, else an InputError naming `where` and `key`."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise InputError(f"{where}: its {key!r} entry is a {type(value).__name__} that is not a dict of named "
                         f"tensors; it is not a biamat-engine checkpoint")
    return value


def load_guarded(load: Callable[[], dict], path: Path) -> dict:
    """`load()` (safetensors' reader) with its errors as an InputError naming `path`; the header
    was checked already, so what is left is a damaged data section or an unreadable file."""
    try:
        return load()
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise InputError(f"{path}: safetensors could not read it ({type(err).__name__}: "
                         f"{(str(err).splitlines() or [''])[0][:160]}); export the model again") from None
