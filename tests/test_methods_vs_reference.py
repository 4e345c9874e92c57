"""The engine's training objectives against the plain reference steps of `bench step`.

Every comparison runs the engine step and the reference step on copies of one model, on one
batch, from the same RNG seed, in fp32 and eagerly, and compares the loss, every weight
gradient, the BatchNorm running statistics (which count train-mode forwards), and in biamat
mode omega and the routing.

Random starts: both implementations draw their start noise once, for the combined batch
[x_pri; x_aux], after routing (which draws nothing): AT with `uniform_(-eps, eps)` on a tensor
shaped like the batch, TRADES with `randn` of the batch's shape. With the same seed before each
step the draws are the same numbers, so the attacks are compared with their full step count,
not only with steps = 0. That holds for NCHW batches; a channels-last batch fills its noise in
memory order, so the channels-last check uses eps = 0, where the attack is deterministic.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.reference_step import NAIVE_STEPS, REFERENCE_STEPS, reference_route
from engine.attacks import bn_mode
from engine.config import AttackConfig, MethodConfig
from engine.methods import METHODS, MethodState, StepContext
from engine.methods.routing import route
from engine.models import build
from engine.step import TrainStep
from kernels import dispatch
from loaders.types import Batch

N_PRI, N_AUX, SIZE, AUX_CLASSES = 8, 8, 16, 20


@pytest.fixture(autouse=True)
def _no_global_kernel_switch(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convolutions: a second thread only adds contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, (AUX_CLASSES,))
    # A few SGD-free nudges so BatchNorm's affine terms are not all ones/zeros (gradients of a
    # freshly initialised net hide mistakes in the scale/shift paths).
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _batch(channels_last: bool = False) -> Batch:
    g = torch.Generator().manual_seed(1)
    x_pri = torch.rand(N_PRI, 3, SIZE, SIZE, generator=g)
    x_aux = torch.rand(N_AUX, 3, SIZE, SIZE, generator=g)
    if channels_last:
        x_pri, x_aux = (x.contiguous(memory_format=torch.channels_last) for x in (x_pri, x_aux))
    return Batch(x_pri=x_pri, y_pri=torch.randint(0, 10, (N_PRI,), generator=g), x_aux=x_aux,
                 y_aux=torch.randint(0, AUX_CLASSES, (N_AUX,), generator=g),
                 aux_source=torch.zeros(N_AUX, dtype=torch.int64), aux_sizes=(N_AUX,))


def _attack(method: str, **kw) -> AttackConfig:
    base = dict(eps=8 / 255, step_size=2 / 255, steps=10) if method == "at" else dict(eps=0.031, step_size=0.007,
                                                                                     steps=10)
    return AttackConfig(**{**base, **kw})


def _ctx(model, method: MethodConfig, attack: AttackConfig, in_warmup: bool, impl: str = "torch") -> StepContext:
    return StepContext(method=method, attack=attack, in_warmup=in_warmup, trunk=model.features, kernel_impl=impl)


def _run(step_fn, model, batch, state, ctx, seed=7):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss, stats = step_fn(model, batch, state, ctx)
    model.zero_grad(set_to_none=True)  # the naive attack leaves weight gradients behind
    loss.backward()
    return loss.detach(), stats


def _assert_same_model_state(a, b, rtol=1e-4, atol=1e-6):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad is None) == (pb.grad is None), f"{name}: a gradient on one side only"
        if pa.grad is None:  # an auxiliary head in aux_mode none
            continue
        torch.testing.assert_close(pa.grad, pb.grad, rtol=rtol, atol=atol, msg=lambda m: f"grad of {name}: {m}")
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        if ba.is_floating_point():
            torch.testing.assert_close(ba, bb, rtol=rtol, atol=atol, msg=lambda m: f"buffer {name}: {m}")
        else:
            assert torch.equal(ba, bb), f"buffer {name}: {ba} vs {bb}"


# pi = 1.0 puts omega at the mean primary confidence, so a random net routes a mix of samples.
MODES = [
    pytest.param(dict(aux_mode="biamat", pi=1.0), False, id="biamat"),
    pytest.param(dict(aux_mode="biamat", pi=1.0), True, id="biamat-warmup"),
    pytest.param(dict(aux_mode="uniform"), False, id="uniform"),
    pytest.param(dict(aux_mode="none"), False, id="none"),
]


@pytest.mark.parametrize("impl", ["torch", "auto"])
@pytest.mark.parametrize("mode, in_warmup", MODES)
@pytest.mark.parametrize("method", ["at", "trades"])
def test_engine_step_matches_reference(method, mode, in_warmup, impl):
    base = _model()
    ref_model, eng_model = copy.deepcopy(base), copy.deepcopy(base)
    batch = _batch()
    cfg = MethodConfig(name=method, alpha=0.5 if method == "trades" else 1.0, **mode)
    attack = _attack(method)
    ref_state, eng_state = MethodState(), MethodState()

    loss_r, stats_r = _run(REFERENCE_STEPS[method], ref_model, batch, ref_state, _ctx(ref_model, cfg, attack, in_warmup))
    loss_e, stats_e = _run(METHODS[method], eng_model, batch, eng_state, _ctx(eng_model, cfg, attack, in_warmup, impl))

    torch.testing.assert_close(loss_e, loss_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(stats_e.loss_pri), torch.as_tensor(stats_r.loss_pri), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(stats_e.loss_low), torch.as_tensor(stats_r.loss_low), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(stats_e.loss_high), torch.as_tensor(stats_r.loss_high), rtol=1e-5,
                               atol=1e-6)
    _assert_same_model_state(eng_model, ref_model)
    assert stats_e.routed == stats_r.routed == (mode["aux_mode"] == "biamat" and not in_warmup)
    assert int(stats_e.n_high) == int(stats_r.n_high)
    if stats_r.routed:
        assert eng_state.omega == pytest.approx(ref_state.omega, rel=1e-6)
        assert 0 < int(stats_r.n_high) < N_AUX, "the test batch should route some samples each way"
        for a, b in zip(stats_e.high_per_class, stats_r.high_per_class):
            assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_trades_ce_on_high_matches_reference(impl):
    base = _model()
    ref_model, eng_model = copy.deepcopy(base), copy.deepcopy(base)
    cfg = MethodConfig(name="trades", aux_mode="biamat", pi=1.0, alpha=0.5, high_loss="ce")
    attack = _attack("trades")
    loss_r, _ = _run(REFERENCE_STEPS["trades"], ref_model, _batch(), MethodState(), _ctx(ref_model, cfg, attack, False))
    loss_e, _ = _run(METHODS["trades"], eng_model, _batch(), MethodState(), _ctx(eng_model, cfg, attack, False, impl))
    torch.testing.assert_close(loss_e, loss_r, rtol=1e-5, atol=1e-6)
    _assert_same_model_state(eng_model, ref_model)


@pytest.mark.parametrize("bn_stats", ["step", "every_forward"])
def test_at_batchnorm_statistics_match_reference_under_both_settings(bn_stats):
    # Two mechanisms, one result: the engine's attack hands BatchNorm no buffers to update, the
    # reference puts them back after its attack (as TensorFlow runs the update ops with the train op).
    base = _model()
    ref_model, eng_model = copy.deepcopy(base), copy.deepcopy(base)
    cfg = MethodConfig(name="at", aux_mode="biamat", pi=1.0)
    attack = _attack("at", bn_stats=bn_stats)
    _run(REFERENCE_STEPS["at"], ref_model, _batch(), MethodState(), _ctx(ref_model, cfg, attack, False))
    _run(METHODS["at"], eng_model, _batch(), MethodState(), _ctx(eng_model, cfg, attack, False, "torch"))
    _assert_same_model_state(eng_model, ref_model)
    tracked = {int(m.num_batches_tracked) for m in eng_model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert tracked == ({1} if bn_stats == "step" else {attack.steps + 1})


@pytest.mark.parametrize("method", ["at", "trades"])
def test_omega_frozen_and_routing_agree_over_steps(method):
    """Three trainer steps after warm-up: omega set at the first and kept, the same routing and
    loss at every step as BatchNorm statistics and weights move.

    After each step the engine's model takes the reference's weights: the attack's sign() turns
    float rounding (about 1e-8 here, from soft-CE written as logsumexp - mean in the engine and
    -mean(log_softmax) in the reference) into a different pixel now and then, and such flips
    compound over steps; the single-step tests above pin the arithmetic itself."""
    base = _model()
    ref_model, eng_model = copy.deepcopy(base), copy.deepcopy(base)
    cfg = MethodConfig(name=method, aux_mode="biamat", pi=1.0)
    attack = _attack(method, steps=3)
    ref_state, eng_state = MethodState(), MethodState()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    omegas = []
    for step in range(3):
        eng_opt = torch.optim.SGD(eng_model.parameters(), lr=0.05, momentum=0.9)
        eng_opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # load_state_dict would share buffers
        torch.manual_seed(step)
        fp32 = torch.amp.GradScaler("cpu", enabled=False)
        loss_r, _ = TrainStep(ref_model, REFERENCE_STEPS[method], ref_opt, fp32, ref_state)(
            _batch(), _ctx(ref_model, cfg, attack, False))
        torch.manual_seed(step)
        loss_e, _ = TrainStep(eng_model, METHODS[method], eng_opt, fp32, eng_state)(
            _batch(), _ctx(eng_model, cfg, attack, False))
        torch.testing.assert_close(loss_e.detach(), loss_r.detach(), rtol=1e-5, atol=1e-6)
        for pa, pb in zip(eng_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-4, atol=1e-6)
        omegas.append(eng_state.omega)
        assert eng_state.omega == pytest.approx(ref_state.omega, rel=1e-6)
        ctx = _ctx(eng_model, cfg, attack, False)
        high_r, _ = reference_route(ref_model, _batch().x_pri, _batch().x_aux, MethodState(omega=ref_state.omega), ctx)
        with torch.no_grad(), bn_mode(eng_model, "eval"):
            high_e, _ = route(MethodState(omega=eng_state.omega), ctx, None, lambda: eng_model(_batch().x_aux),
                              N_AUX, torch.device("cpu"))
        assert torch.equal(high_e, high_r)
        eng_model.load_state_dict(ref_model.state_dict())
    assert omegas[0] == omegas[1] == omegas[2]


@pytest.mark.parametrize("method", ["at", "trades"])
def test_channels_last_engine_matches_nchw_reference(method):
    """The trainer's layout (channels-last model and batch) computes the same step; eps = 0 keeps
    the attack deterministic, since a channels-last tensor draws its noise in memory order."""
    base = _model()
    ref_model, eng_model = copy.deepcopy(base), copy.deepcopy(base).to(memory_format=torch.channels_last)
    cfg = MethodConfig(name=method, aux_mode="biamat", pi=1.0)
    attack = _attack(method, eps=0.0, steps=2)
    loss_r, _ = _run(REFERENCE_STEPS[method], ref_model, _batch(), MethodState(), _ctx(ref_model, cfg, attack, False))
    loss_e, _ = _run(METHODS[method], eng_model, _batch(channels_last=True), MethodState(),
                     _ctx(eng_model, cfg, attack, False, "auto"))
    torch.testing.assert_close(loss_e, loss_r, rtol=1e-5, atol=1e-6)
    _assert_same_model_state(eng_model, ref_model)


@pytest.mark.parametrize("method", ["at", "trades"])
def test_naive_step_same_loss_but_wastes_weight_gradients(method):
    base = _model()
    ref_model, naive_model = copy.deepcopy(base), copy.deepcopy(base)
    cfg = MethodConfig(name=method, aux_mode="biamat", pi=1.0)
    attack = _attack(method, steps=3)
    loss_r, _ = _run(REFERENCE_STEPS[method], ref_model, _batch(), MethodState(), _ctx(ref_model, cfg, attack, False))

    torch.manual_seed(7)
    naive_model.zero_grad(set_to_none=True)
    loss_n, _ = NAIVE_STEPS[method](naive_model, _batch(), MethodState(), _ctx(naive_model, cfg, attack, False))
    wasted = [p.grad for p in naive_model.parameters() if p.grad is not None]
    assert wasted and any(float(g.abs().sum()) > 0 for g in wasted), "the naive attack should fill weight grads"
    naive_model.zero_grad(set_to_none=True)
    loss_n.backward()
    torch.testing.assert_close(loss_n.detach(), loss_r, rtol=1e-6, atol=1e-7)
    _assert_same_model_state(naive_model, ref_model, rtol=1e-6, atol=1e-7)


# ---- the benchmark's arithmetic -------------------------------------------------------------
