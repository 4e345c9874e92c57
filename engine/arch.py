"""Architecture names (`wrn-DEPTH-WIDTH`): the grammar the config validates and `engine.models`
builds from. Its own module, so that checking a config never imports the models package."""

from __future__ import annotations

import re

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
