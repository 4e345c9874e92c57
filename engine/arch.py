"""Architecture names: `wrn-DEPTH-WIDTH` (WideResNets) and `resnet-DEPTH` (the CIFAR ResNets of
the paper's Appendix B), the grammar the config validates and `engine.models` builds from. Its
own module, so that checking a config never imports the models package."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kernels.errors import InputError

_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")
_RESNET = re.compile(r"^resnet-(\d+)$")

RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
"""BasicBlocks per stage of each CIFAR ResNet (He et al. 2016, Table 1), stages 64-128-256-512 wide."""
RESNET_WIDTH = 64
"""Channels of the first ResNet stage; the later stages double it."""

_FORMS = "wrn-DEPTH-WIDTH (e.g. wrn-28-10, wrn-34-10, wrn-16-10) or resnet-18 / resnet-34"


@dataclass(frozen=True)
class Arch:
    """A parsed architecture name."""

    family: str
    """`wrn` or `resnet`."""
    depth: int
    width: int
    """WideResNet: the widening factor K. ResNet: the first stage's channels (64)."""

    @property
    def name(self) -> str:
        return f"wrn-{self.depth}-{self.width}" if self.family == "wrn" else f"resnet-{self.depth}"


def parse_arch(name: str) -> Arch:
    """`wrn-28-10` -> Arch("wrn", 28, 10), `resnet-18` -> Arch("resnet", 18, 64); anything else
    is an error naming the accepted forms."""
    text = name.strip().lower()
    if match := _RESNET.match(text):
        depth = int(match.group(1))
        if depth not in RESNET_BLOCKS:
            raise InputError(f"model {name!r}: ResNet depth must be one of {sorted(RESNET_BLOCKS)}")
        return Arch("resnet", depth, RESNET_WIDTH)
    match = _WRN.match(text)
    if not match:
        raise InputError(f"unknown model {name!r}: expected {_FORMS}")
    depth, width = int(match.group(1)), int(match.group(2))
    if (depth - 4) % 6 != 0 or depth < 10 or width < 1:
        raise InputError(f"model {name!r}: WideResNet depth must be 6n+4 and at least 10 (10, 16, 22, 28, 34, ...) "
                         "and width >= 1")
    return Arch("wrn", depth, width)
