"""kernels.dispatch: what `auto` picks, the BIAMAT_KERNELS switch, and the errors' fixes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import dispatch, route

CPU = torch.zeros(2)
META = torch.zeros(2, device="meta")  # stands in for a non-CPU device on a CPU-only machine


@pytest.fixture(autouse=True)
def _no_forced_impl(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


@pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
def test_auto_picks_numba_on_cpu():
    assert dispatch.resolve("auto", CPU) == "numba"


def test_auto_falls_back_to_torch_off_cpu_and_cuda():
    assert dispatch.resolve("auto", META) == "torch"


def test_environment_switch_overrides_every_call(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.resolve("auto", CPU) == "torch"
    assert dispatch.resolve("numba", CPU) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="BIAMAT_KERNELS='fastest'"):
        dispatch.resolve("auto", CPU)


def test_unknown_impl_is_named():
    with pytest.raises(ValueError, match="impl='cuda'"):
        route.confidence_mask(torch.zeros(2, 3), 0.5, impl="cuda")


def test_numba_on_a_non_cpu_tensor_says_what_to_use():
    with pytest.raises(ValueError, match="numba kernels run on CPU tensors.*impl='triton'"):
        dispatch.resolve("numba", META)


@pytest.mark.skipif(not dispatch.available("triton"), reason="triton is not installed")
def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dispatch.resolve("triton", CPU)


_CHILD = """
import sys
sys.modules["triton"] = None  # as if triton were not installed
import torch
from kernels import augment, dispatch, pgd, route
assert dispatch.resolve("auto", torch.zeros(1)) == "numba"
high, conf = route.confidence_mask(torch.tensor([[0.0, 10.0], [0.0, 0.0]]), 0.9)
assert high.tolist() == [True, False], high
try:
    dispatch.resolve("triton", torch.zeros(1))
except ModuleNotFoundError as err:
    assert "pip install triton" in str(err), err
else:
    raise AssertionError("triton resolved without triton")
"""


@pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
def test_package_works_without_triton_and_numba_caches_in_numba_cache_dir(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(repo)}
    env.pop(dispatch.ENV_VAR, None)
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.rglob("*.nbi")), "numba wrote no cache index under NUMBA_CACHE_DIR"
