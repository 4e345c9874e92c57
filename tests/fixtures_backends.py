"""The loader backends as pytest parameters, each skipped where its library is not installed."""

from __future__ import annotations

import importlib.util

import pytest


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no parent namespace (`nvidia`) at all
        return False


FFCV = pytest.param("ffcv", marks=pytest.mark.skipif(not installed("ffcv"), reason="ffcv not installed"))
DALI = pytest.param("dali", marks=pytest.mark.skipif(not installed("nvidia.dali"), reason="DALI not installed"))
BACKENDS = ["resident", FFCV, DALI]
IN_MEMORY_BACKENDS = ["resident", DALI]
"""The backends that also read generated and .npz datasets (FFCV reads .beton files only)."""
