"""Forward-only inference backends for the clean pass: eager, torch.compile and TensorRT.

Only forward work (clean accuracy, and the queries of a gradient-free attack) may run on an
accelerated backend; every gradient-based attack runs on the exact eager model, and the
backend's clean predictions are compared with the exact model's on the same images.
Compiled backends are built for one static batch shape: the last, smaller batch is padded, so
neither inductor nor TensorRT recompiles and CUDA graphs are replayed, never re-recorded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

BACKENDS = ("eager", "compile", "tensorrt")


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message names what is missing and what to do."""


@dataclass
class Backend:
    name: str
    precision: str
    """Arithmetic of the forward pass: `fp32`, or `fp16` for TensorRT."""
    forward: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int
    """The static batch shape a compiled backend was built for; inputs are padded up to it."""
    static_shape: bool

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N,) predicted classes, batch by batch."""
        preds = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = images[start:start + self.batch_size]
                n = len(x)
                if self.static_shape and n < self.batch_size:
                    pad = x[-1:].expand(self.batch_size - n, *x.shape[1:])
                    x = torch.cat([x, pad])  # (batch_size, 3, H, W)
                # clone: a CUDA-graph replay overwrites its output buffer on the next call.
                preds.append(self.forward(x)[:n].argmax(1).clone())
        if not preds:
            return torch.zeros(0, dtype=torch.long, device=images.device)
        return torch.cat(preds)


def tensorrt_missing(device: torch.device) -> list[str]:
    """What the TensorRT backend lacks on this machine (empty when it can run)."""
    missing = []
    if importlib.util.find_spec("torch_tensorrt") is None:
        missing.append(
            "the torch-tensorrt package is not installed (pip install 'biamat-engine[tensorrt]'; "
            "pick the torch-tensorrt release built for your torch version)"
        )
    if device.type != "cuda" or not torch.cuda.is_available():
        found = "torch has no CUDA device" if not torch.cuda.is_available() else f"device is {device}"
        missing.append(f"no CUDA device ({found}; it runs with --device cuda on a GPU machine)")
    return missing


def _tensorrt_forward(model: nn.Module, input_shape: tuple[int, ...]) -> Callable:
    import torch_tensorrt  # optional: pip install 'biamat-engine[tensorrt]'

    # fp16 kernels where TensorRT finds them faster, fp32 elsewhere; inputs stay fp32 in [0, 1].
    return torch_tensorrt.compile(
        model,
        ir="dynamo",
        inputs=[torch_tensorrt.Input(shape=input_shape, dtype=torch.float32)],
        enabled_precisions={torch.float16, torch.float32},
    )


def make_backend(
    model: nn.Module, name: str, *, batch_size: int, image_shape: tuple[int, int, int],
    device: torch.device | str,
) -> Backend:
    """A forward-only view of `model` (eval mode) under backend `name`.

    image_shape: (3, H, W) of one input; the compiled backends are specialised to
    (batch_size, 3, H, W).
    """
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    model.eval()
    if name == "eager":
        return Backend("eager", "fp32", model, batch_size, static_shape=False)
    if name == "compile":
        # CUDA graphs remove the per-kernel launch cost that dominates small-batch inference.
        mode = "reduce-overhead" if device.type == "cuda" else None
        return Backend("compile", "fp32", torch.compile(model, mode=mode, dynamic=False),
                       batch_size, static_shape=True)
    missing = tensorrt_missing(device)
    if missing:
        raise BackendUnavailable("the tensorrt backend cannot run here: " + "; ".join(missing)
                                 + ". Use --backend eager or --backend compile instead.")
    forward = _tensorrt_forward(model, (batch_size, *image_shape))
    return Backend("tensorrt", "fp16", forward, batch_size, static_shape=True)


def agreement_tolerance(precision: str) -> float:
    """Largest clean-accuracy gap to the exact model accepted without a warning.

    fp32 backends reorder float sums only, so predictions should match except for exact ties;
    fp16 flips the argmax of samples whose top two logits are within fp16 rounding.
    """
    return 0.01 if precision == "fp16" else 0.002
