"""pgd_step: every fast implementation against the reference, and the projection's invariants."""

from __future__ import annotations

import pytest
import torch

from kernels import dispatch, pgd

TRITON_ON_CPU = pytest.mark.skipif(
    not (dispatch.available("triton") and dispatch.triton_interpreter_on()),
    reason="Triton kernels on CPU need triton and TRITON_INTERPRET=1 (scripts/test.sh sets it)",
)
NEEDS_NUMBA = pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
FAST_IMPLS = [pytest.param("numba", marks=NEEDS_NUMBA), pytest.param("triton", marks=TRITON_ON_CPU)]
EPS, STEP = 8 / 255, 2 / 255
CL = torch.channels_last


@pytest.fixture(autouse=True)
def _no_forced_impl(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def _attack_state(shape=(4, 3, 6, 5), dtype=torch.float32, eps=EPS, fmt=CL):
    """x_nat in [0, 1], x_adv somewhere in its eps-ball, a gradient with some exact zeros."""
    x_nat = torch.rand(shape)
    x_adv = (x_nat + (torch.rand(shape) * 2 - 1) * eps).clamp(0, 1)
    grad = torch.randn(shape)
    grad[grad.abs() < 0.2] = 0.0
    return tuple(t.to(dtype).contiguous(memory_format=fmt) for t in (x_adv, grad, x_nat))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
def test_pgd_step_matches_reference_exactly(impl, fmt):
    torch.manual_seed(0)
    x_adv, grad, x_nat = _attack_state(fmt=fmt)
    out = pgd.pgd_step(x_adv, grad, x_nat, STEP, EPS, impl=impl)
    want = pgd.pgd_step_torch(x_adv, grad, x_nat, STEP, EPS)
    assert out.dtype == x_adv.dtype and out.stride() == x_adv.stride()
    assert out.data_ptr() != x_adv.data_ptr()  # a new tensor, x_adv untouched
    assert torch.equal(out, want)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pgd_step_half_precision(impl, dtype):
    torch.manual_seed(1)
    x_adv, grad, x_nat = _attack_state(dtype=dtype)
    out = pgd.pgd_step(x_adv, grad, x_nat, STEP, EPS, impl=impl)
    want = pgd.pgd_step_torch(x_adv, grad, x_nat, STEP, EPS)
    # the kernels round once at the end, the reference after every operation
    assert out.dtype == dtype and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out.float(), want.float(), rtol=0, atol=2 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_pgd_step_stays_in_eps_ball_and_image_box(impl):
    torch.manual_seed(2)
    x_nat = torch.rand(3, 3, 8, 8).contiguous(memory_format=CL)
    x_adv = torch.rand(3, 3, 8, 8).contiguous(memory_format=CL)  # far outside the ball
    out = pgd.pgd_step(x_adv, torch.randn(3, 3, 8, 8), x_nat, 0.5, EPS, impl=impl)
    assert float((out - x_nat).abs().max()) <= EPS + 1e-7
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_pgd_step_eps_zero_returns_the_natural_image(impl):
    torch.manual_seed(3)
    x_adv, grad, x_nat = _attack_state()
    out = pgd.pgd_step(x_adv, grad, x_nat, STEP, 0.0, impl=impl)
    assert torch.equal(out, x_nat)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_pgd_step_mixed_layouts_and_strided_input(impl):
    torch.manual_seed(4)
    x_adv, grad, x_nat = _attack_state(shape=(6, 3, 5, 5))
    grad_nchw = grad.contiguous()  # autograd may hand back another memory format
    out = pgd.pgd_step(x_adv, grad_nchw, x_nat, STEP, EPS, impl=impl)
    assert out.is_contiguous(memory_format=CL)
    assert torch.equal(out, pgd.pgd_step_torch(x_adv, grad_nchw, x_nat, STEP, EPS))
    every_other = x_adv[::2]  # not dense: the kernel works on a compact copy
    out = pgd.pgd_step(every_other, grad[::2], x_nat[::2], STEP, EPS, impl=impl)
    assert torch.equal(out, pgd.pgd_step_torch(every_other, grad[::2], x_nat[::2], STEP, EPS))


def test_pgd_step_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        pgd.pgd_step(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 4), STEP, EPS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_pgd_step_on_cuda(dtype):
    torch.manual_seed(5)
    x_adv, grad, x_nat = (t.cuda() for t in _attack_state(shape=(256, 3, 32, 32), dtype=dtype))
    out = pgd.pgd_step(x_adv, grad, x_nat, STEP, EPS, impl="triton")
    want = pgd.pgd_step_torch(x_adv, grad, x_nat, STEP, EPS)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out.float(), want.float(), rtol=0, atol=2 * torch.finfo(dtype).eps)
