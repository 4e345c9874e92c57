"""What a value read from JSON (a manifest, a model card, a run's records) is, checked before it
is used: `json` gives booleans as ints, and a record edited by hand or another tool can hold
anything, so a bare isinstance(value, int) says yes to `true`."""

from __future__ import annotations

import math


def whole_number(value) -> bool:
    """A JSON integer, not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def json_number(value) -> bool:
    """A JSON number (integer or float), not a boolean; NaN and infinity included (json writes them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value) -> bool:
    """A JSON number that is neither NaN nor infinite."""
    return json_number(value) and math.isfinite(value)
