"""confidence_mask and routed_loss: every fast implementation against the plain-torch reference."""

from __future__ import annotations

import pytest
import torch

from kernels import dispatch, route

TRITON_ON_CPU = pytest.mark.skipif(
    not (dispatch.available("triton") and dispatch.triton_interpreter_on()),
    reason="Triton kernels on CPU need triton and TRITON_INTERPRET=1 (scripts/test.sh sets it)",
)
NEEDS_NUMBA = pytest.mark.skipif(not dispatch.available("numba"), reason="numba is not installed")
FAST_IMPLS = [pytest.param("numba", marks=NEEDS_NUMBA), pytest.param("triton", marks=TRITON_ON_CPU)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (batch, primary classes, auxiliary classes): batch of 1, 1 class, 1000 classes, and rows
# longer than one Triton block (1024) so the online max/sum loop runs.
SHAPES = [(7, 10, 13), (1, 10, 5), (6, 1, 1), (5, 1000, 1000), (3, 2500, 1100)]


@pytest.fixture(autouse=True)
def _no_forced_impl(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def _logits(b: int, c: int, dtype, scale: float = 3.0, contiguous: bool = True) -> torch.Tensor:
    if contiguous:
        return (torch.randn(b, c) * scale).to(dtype)
    # a transposed view: column stride 1 becomes row stride 1
    return (torch.randn(c, b) * scale).to(dtype).t()


def _tolerances(dtype):
    # Both sides reduce in float32; the gradients are rounded to the logits' dtype at the end.
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,c,k", SHAPES)
def test_confidence_mask_matches_reference(impl, dtype, b, c, k):
    torch.manual_seed(b * c)
    logits = _logits(b, c, dtype)
    omega = 0.5
    high, conf = route.confidence_mask(logits, omega, impl=impl)
    high_ref, conf_ref = route.confidence_mask_torch(logits, omega)
    assert high.dtype == torch.bool and conf.dtype == torch.float32 and conf.shape == (b,)
    torch.testing.assert_close(conf, conf_ref, rtol=1e-5, atol=1e-6)
    decided = (conf_ref - omega).abs() > 1e-5  # rows on the threshold may round either way
    assert torch.equal(high[decided], high_ref[decided])


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("omega,expect_high", [(0.0, True), (1.01, False)])
def test_confidence_mask_all_high_and_all_low(impl, omega, expect_high):
    high, conf = route.confidence_mask(_logits(9, 10, torch.float32), omega, impl=impl)
    assert bool(high.all()) if expect_high else not bool(high.any())
    assert bool(((conf > 0.1 - 1e-6) & (conf <= 1.0 + 1e-6)).all())  # max softmax over 10 classes


@pytest.mark.parametrize("impl", ["torch"] + FAST_IMPLS)
def test_confidence_mask_takes_omega_as_a_device_tensor(impl):
    # The training step keeps omega on the device (a 0-dim float64 tensor): every implementation
    # must give what the number gives (a float32 compare), at omega exactly on a confidence too.
    torch.manual_seed(0)
    logits = _logits(33, 10, torch.float32)
    _, conf = route.confidence_mask_torch(logits, 0.0)
    for omega in (0.3, float(conf[5]), float(conf.max()) + 1e-3):
        expected, _ = route.confidence_mask(logits, omega, impl=impl)  # the number, same implementation
        high, got_conf = route.confidence_mask(logits, torch.tensor(omega, dtype=torch.float64), impl=impl)
        assert torch.equal(high, expected) and torch.equal(got_conf.to(conf.dtype), got_conf)
        torch.testing.assert_close(got_conf, conf, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_confidence_mask_large_and_non_contiguous_logits(impl, dtype):
    torch.manual_seed(1)
    logits = _logits(6, 100, dtype, scale=1e4, contiguous=False)
    assert not logits.is_contiguous()
    high, conf = route.confidence_mask(logits, 0.9, impl=impl)
    high_ref, conf_ref = route.confidence_mask_torch(logits, 0.9)
    assert bool(torch.isfinite(conf).all())
    torch.testing.assert_close(conf, conf_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(high, high_ref)


def _mask(b: int, kind: str) -> torch.Tensor:
    if kind == "random":
        m = torch.rand(b) > 0.5
        m[0] = not m[-1] if b > 1 else m[0]  # both kinds present whenever the batch allows it
        return m
    return torch.full((b,), kind == "high", dtype=torch.bool)


def _check_routed(impl, pri, aux, y, high):
    """Loss and both gradients of impl against autograd through the reference."""
    pri_a, aux_a = pri.detach().clone().requires_grad_(), aux.detach().clone().requires_grad_()
    pri_r, aux_r = pri.detach().clone().requires_grad_(), aux.detach().clone().requires_grad_()
    loss = route.routed_loss(pri_a, aux_a, y, high, impl=impl)
    loss_ref = route.routed_loss_torch(pri_r, aux_r, y, high)
    assert loss.dtype == torch.float32 and loss.shape == (pri.shape[0],)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-4)
    weights = torch.randn(pri.shape[0], device=pri.device)  # a non-uniform upstream gradient
    (loss * weights).sum().backward()
    (loss_ref * weights).sum().backward()
    for got, want in ((pri_a.grad, pri_r.grad), (aux_a.grad, aux_r.grad)):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **_tolerances(pri.dtype))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("kind", ["random", "high", "low"])
@pytest.mark.parametrize("b,c,k", SHAPES)
def test_routed_loss_and_gradients_match_reference(impl, kind, b, c, k):
    torch.manual_seed(b + c + k)
    _check_routed(impl, _logits(b, c, torch.float32), _logits(b, k, torch.float32), torch.randint(0, k, (b,)),
                  _mask(b, kind))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_routed_loss_dtypes_non_contiguous_and_large_logits(impl, dtype):
    torch.manual_seed(2)
    b = 8
    pri = _logits(b, 10, dtype, scale=1e4, contiguous=False)
    aux = _logits(b, 2 * 30, dtype)[:, ::2]  # every other column: column stride 2
    assert not pri.is_contiguous() and not aux.is_contiguous()
    _check_routed(impl, pri, aux, torch.randint(0, 30, (b,)), _mask(b, "random"))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_routed_loss_sum_backward_through_expanded_gradient(impl):
    # .sum() hands the backward an expanded (stride 0) gradient
    torch.manual_seed(3)
    pri = _logits(5, 10, torch.float32).requires_grad_()
    aux = _logits(5, 7, torch.float32).requires_grad_()
    y, high = torch.randint(0, 7, (5,)), _mask(5, "random")
    route.routed_loss(pri, aux, y, high, impl=impl).sum().backward()
    want_pri, want_aux = torch.autograd.grad(route.routed_loss_torch(pri, aux, y, high).sum(), [pri, aux])
    torch.testing.assert_close(pri.grad, want_pri)
    torch.testing.assert_close(aux.grad, want_aux)


def test_uniform_soft_ce_is_log_c_at_uniform_logits():
    c = 10
    loss = route.routed_loss(torch.zeros(2, c), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                             torch.zeros(2, dtype=torch.bool))
    torch.testing.assert_close(loss, torch.full((2,), route.uniform_ce_floor(c)))


def test_routed_loss_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="one row per sample"):
        route.routed_loss(torch.zeros(4, 10), torch.zeros(3, 5), torch.zeros(4, dtype=torch.long),
                          torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="high must be bool"):
        route.routed_loss(torch.zeros(4, 10), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), torch.zeros(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_route_on_cuda(dtype):
    torch.manual_seed(4)
    b, c, k = 256, 100, 1000
    pri, aux = _logits(b, c, dtype).cuda(), _logits(b, k, dtype).cuda()
    y, high = torch.randint(0, k, (b,), device="cuda"), _mask(b, "random").cuda()
    conf, conf_ref = route.confidence_mask(pri, 0.5, impl="triton")[1], route.confidence_mask_torch(pri, 0.5)[1]
    torch.testing.assert_close(conf, conf_ref, rtol=1e-5, atol=1e-6)
    _check_routed("triton", pri, aux, y, high)
