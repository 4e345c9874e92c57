"""kernels.dispatch: what `auto` picks, the BIAMAT_KERNELS switch, and the errors' fixes."""

from __future__ import annotations

import os
import re
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


BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def measured_cpu_winners() -> dict[str, str]:
    """Per kernel, from the last CPU table of docs/benchmarks.md's "Kernels" section (its most
    recent run): numba where its speed-up over the eager reference is above 1 at every size,
    else torch."""
    section = BENCHMARKS.read_text().split("\n## Kernels\n")[1].split("\n## ")[0]
    tables = re.findall(r"(?:^\|.*\|\n)+", section, flags=re.M)
    numba_wins: dict[str, bool] = {}
    for line in tables[-1].splitlines()[2:]:
        kernel, _, impl, _, _, speedup = (c.strip() for c in line.strip("|").split("|"))
        if impl == "numba":
            name = kernel.split()[0]  # "routed_loss fwd+bwd" is the routed_loss kernel
            numba_wins[name] = numba_wins.get(name, True) and float(speedup.rstrip("x")) > 1
    return {name: "numba" if wins else "torch" for name, wins in numba_wins.items()}


def test_the_cpu_table_follows_the_latest_measurement_in_the_docs():
    assert dispatch.CPU_AUTO == measured_cpu_winners()


def test_every_kernel_resolves_auto_through_the_table(monkeypatch):
    # Each public kernel names itself to the dispatcher by its table key: a kernel missing from
    # the table, or a key no kernel uses, would leave `auto` unmeasured for it.
    from kernels import augment, pgd

    asked = []
    real = dispatch._auto
    monkeypatch.setattr(dispatch, "_auto", lambda device, kernel: asked.append(kernel) or real(device, kernel))
    logits = torch.randn(4, 3)
    route.confidence_mask(logits, 0.5)
    route.routed_loss(logits, torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), torch.tensor([True, False] * 2))
    x = torch.rand(2, 3, 4, 4)
    pgd.pgd_step(x, torch.randn_like(x), x, 0.1, 0.2)
    augment.crop_flip(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.int64),
                      torch.tensor([True, False]))
    assert sorted(asked) == sorted(dispatch.CPU_AUTO)


@pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
@pytest.mark.parametrize("kernel", sorted(dispatch.CPU_AUTO))
def test_auto_on_cpu_runs_the_tables_choice(kernel):
    assert dispatch.resolve("auto", CPU, kernel) == dispatch.CPU_AUTO[kernel]


def test_auto_on_cpu_without_numba_runs_the_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "available", lambda name: False)
    assert {dispatch.resolve("auto", CPU, k) for k in dispatch.CPU_AUTO} == {"torch"}
    assert dispatch.auto_for_device(CPU.device) == "torch"


@pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
def test_a_run_records_auto_where_it_picks_per_kernel_and_the_one_choice_otherwise():
    mixed = len(set(dispatch.CPU_AUTO.values())) > 1
    assert dispatch.auto_for_device(CPU.device) == ("auto" if mixed else next(iter(dispatch.CPU_AUTO.values())))


def test_auto_falls_back_to_torch_off_cpu_and_cuda():
    assert {dispatch.resolve("auto", META, k) for k in dispatch.CPU_AUTO} == {"torch"}
    assert dispatch.auto_for_device(META.device) == "torch"


def test_environment_switch_overrides_every_call(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.resolve("auto", CPU, "pgd_step") == "torch"
    assert dispatch.resolve("numba", CPU, "pgd_step") == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="BIAMAT_KERNELS='fastest'"):
        dispatch.resolve("auto", CPU, "pgd_step")


def test_unknown_impl_is_named():
    with pytest.raises(ValueError, match="impl='cuda'"):
        route.confidence_mask(torch.zeros(2, 3), 0.5, impl="cuda")


def test_numba_on_a_non_cpu_tensor_says_what_to_use():
    with pytest.raises(ValueError, match="numba kernels run on CPU tensors.*impl='triton'"):
        dispatch.resolve("numba", META, "pgd_step")


@pytest.mark.skipif(not dispatch.available("triton"), reason="triton is not installed")
def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dispatch.resolve("triton", CPU, "pgd_step")


_CHILD = """
import sys
sys.modules["triton"] = None  # as if triton were not installed
import torch
from kernels import augment, dispatch, pgd, route
assert all(dispatch.resolve("auto", torch.zeros(1), k) == v for k, v in dispatch.CPU_AUTO.items())
high, conf = route.confidence_mask(torch.tensor([[0.0, 10.0], [0.0, 0.0]]), 0.9, impl="numba")
assert high.tolist() == [True, False], high
try:
    dispatch.resolve("triton", torch.zeros(1), "pgd_step")
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
