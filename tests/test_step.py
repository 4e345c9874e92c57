"""`engine.step`: the one training step the trainer trains with and `bench step` times."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.config import AttackConfig, MethodConfig, RuntimeConfig
from engine.methods import METHODS, MethodState, StepContext, StepStats
from engine.models import build
from engine.runtime import resolve_runtime
from engine.step import RECOMPILE_LIMIT, TrainStep, compile_trunk
from tests.conftest import make_batch

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _ce_objective(model, batch, state, ctx):
    loss = F.cross_entropy(model.heads(ctx.trunk(batch.x_pri))[0], batch.y_pri)
    return loss, StepStats(loss=loss.detach(), loss_pri=loss.detach())


def _ctx(model) -> StepContext:
    return StepContext(method=MethodConfig(name="at", aux_mode="none"), attack=AttackConfig(steps=1),
                       in_warmup=False, trunk=model.features)


def test_a_step_is_objective_backward_and_one_optimizer_step():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10)
    by_hand = copy.deepcopy(model)
    batch = make_batch(n_pri=6, aux_sizes=(), aux_classes=())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, _ce_objective, opt, torch.amp.GradScaler("cpu", enabled=False), MethodState())
    model.eval()  # a step trains, whatever mode the model was left in
    loss, _ = step(batch, _ctx(model))

    opt_hand = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9)
    by_hand.train()
    loss_hand = F.cross_entropy(by_hand(batch.x_pri), batch.y_pri)
    loss_hand.backward()
    opt_hand.step()
    torch.testing.assert_close(loss.detach(), loss_hand.detach())
    for a, b in zip(model.state_dict().values(), by_hand.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert model.training


def test_gradients_of_an_earlier_step_never_leak_into_the_next():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10)
    batch = make_batch(n_pri=4, aux_sizes=(), aux_classes=())
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e3)  # what a naive attack's loss.backward() leaves behind
    reference = copy.deepcopy(model)
    for p in reference.parameters():
        p.grad = None
    fp32 = torch.amp.GradScaler("cpu", enabled=False)
    TrainStep(model, _ce_objective, torch.optim.SGD(model.parameters(), lr=0.1), fp32, MethodState())(batch, _ctx(model))
    TrainStep(reference, _ce_objective, torch.optim.SGD(reference.parameters(), lr=0.1), fp32,
              MethodState())(batch, _ctx(reference))
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_an_enabled_scaler_skips_the_step_of_a_non_finite_loss():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10)
    before = copy.deepcopy(model.state_dict())

    def inf_objective(model, batch, state, ctx):
        loss, stats = _ce_objective(model, batch, state, ctx)
        return loss * float("inf"), stats

    scaler = torch.amp.GradScaler("cpu", enabled=True)
    step = TrainStep(model, inf_objective, torch.optim.SGD(model.parameters(), lr=0.1), scaler, MethodState())
    step(make_batch(n_pri=4, aux_sizes=(), aux_classes=()), _ctx(model))
    for key, value in model.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, before[key]), key
    assert scaler.get_scale() < 65536.0  # the scaler backed off


def test_the_method_state_persists_across_steps():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, aux_classes=(20,))
    ctx = StepContext(method=MethodConfig(name="at", aux_mode="biamat", pi=0.5), attack=AttackConfig(steps=1),
                      in_warmup=False, trunk=model.features)
    step = TrainStep(model, METHODS["at"], torch.optim.SGD(model.parameters(), lr=0.01),
                     torch.amp.GradScaler("cpu", enabled=False), MethodState())
    step(make_batch(seed=0), ctx)
    omega = step.state.omega
    assert omega is not None and 0 < omega <= 0.5
    step(make_batch(seed=1), ctx)
    assert step.state.omega == omega  # omega is fixed at the first routed step


def test_compile_trunk_follows_the_runtime_and_raises_the_recompile_limit():
    model = build("wrn-10-1", 10)
    eager, _ = resolve_runtime(RuntimeConfig(device="cpu", compile="off"))
    assert compile_trunk(model, eager) == model.features
    compiled, _ = resolve_runtime(RuntimeConfig(device="cpu", compile="on"))
    trunk = compile_trunk(model, compiled)
    assert trunk != model.features and callable(trunk)
    import torch._dynamo.config as dynamo_config

    limits = [getattr(dynamo_config, n) for n in ("recompile_limit", "cache_size_limit") if hasattr(dynamo_config, n)]
    assert limits and all(limit >= RECOMPILE_LIMIT for limit in limits)


def test_a_compile_mode_reaches_torch_compile_and_the_resolved_config(monkeypatch):
    """`runtime.compile = reduce-overhead` (CUDA graphs) is `on` with torch.compile's mode: the
    trunk is compiled with it, and config.toml records the mode that ran."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    model = build("wrn-10-1", 10)
    for choice, mode in (("on", None), ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")):
        rt, resolved = resolve_runtime(RuntimeConfig(device="cpu", compile=choice))
        assert rt.compile and rt.compile_mode == mode and resolved.compile == choice
        compile_trunk(model, rt)
        assert calls[-1] == {"mode": mode, "dynamic": None}  # compile_dynamic auto, no drop_last
    rt, resolved = resolve_runtime(RuntimeConfig(device="cpu", compile="off"))
    assert not rt.compile and rt.compile_mode is None and resolved.compile == "off"


def test_cudnn_autotuning_is_recorded_as_it_ran():
    """cuDNN autotuning exists on CUDA only and is off under deterministic: the resolved config
    says what ran, not what was asked."""
    for device, deterministic, ran in (("cpu", False, False),) + (
            (("cuda", False, True), ("cuda", True, False)) if torch.cuda.is_available() else ()):
        rt, resolved = resolve_runtime(RuntimeConfig(device=device, cudnn_benchmark=True, deterministic=deterministic))
        assert rt.cudnn_benchmark is ran and resolved.cudnn_benchmark is ran


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reduce_overhead_trunk_and_cudnn_autotuning_give_the_eager_features_on_cuda():
    from engine.runtime import apply_backend_flags

    model = build("wrn-10-2", 10).cuda().to(memory_format=torch.channels_last).eval()
    x = torch.rand(16, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = model.features(x)
    rt, _ = resolve_runtime(RuntimeConfig(device="cuda", precision="fp32", compile="reduce-overhead",
                                          cudnn_benchmark=True))
    apply_backend_flags(rt)
    try:
        assert torch.backends.cudnn.benchmark
        trunk = compile_trunk(model, rt)
        with torch.no_grad():
            for _ in range(3):  # the first calls record, later ones replay the CUDA graph
                out = trunk(x).clone()
        torch.testing.assert_close(out, eager, rtol=1e-3, atol=1e-3)
    finally:
        torch.backends.cudnn.benchmark = False


def test_bench_step_rows_train_through_the_trainers_step(monkeypatch):
    """`bench step` times TrainStep objects, and its engine rows take their trunk from
    `compile_trunk`, so "the engine's step" is the one that trains."""
    import benchmarks.step as bench

    seen = []

    def spy(model, runtime):
        seen.append(runtime.compile)
        return compile_trunk(model, runtime)

    monkeypatch.setattr(bench, "compile_trunk", spy)
    base = build("wrn-10-1", 10, aux_classes=(7,))
    variants = bench.build_variants("at", base, device="cpu", n_pri=2, n_aux=2, size=8, aux_classes=7,
                                    aux_mode="biamat", attack_steps=1, compile="off,on", precision="auto",
                                    kernels="torch", seed=0)
    assert seen == [False, True]
    assert all(isinstance(v.train_step, TrainStep) for v in variants)
    assert [v.impl for v in variants] == ["engine", "engine", "reference", "naive"]
    assert variants[0].train_step.objective is METHODS["at"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method, threshold", [("at", "frozen"), ("at", "ema"), ("trades", "ema")])
def test_a_routed_training_step_never_waits_for_the_device(method, threshold):
    """After the first step (Triton compiles, the optimiser makes its buffers, omega is fixed),
    a BiaMAT step queues its work without one host sync: the trainer's every-N-steps non-finite
    check is the only place a step waits."""
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, aux_classes=(20,)).cuda().to(memory_format=torch.channels_last)
    ctx = StepContext(method=MethodConfig(name=method, aux_mode="biamat", pi=0.5, threshold=threshold),
                      attack=AttackConfig(steps=2), in_warmup=False, trunk=model.features)
    step = TrainStep(model, METHODS[method], torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     torch.amp.GradScaler("cuda", enabled=False), MethodState())
    batches = [make_batch(n_pri=6, aux_sizes=(5,), aux_classes=(20,), seed=s, device="cuda") for s in range(3)]
    step(batches[0], ctx)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            loss, stats = step(batch, ctx)
            assert stats.routed
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and 0 < step.state.omega <= 0.5


@pytest.mark.parametrize("method, threshold", [("at", "frozen"), ("at", "ema"), ("trades", "ema")])
def test_a_routed_training_step_reads_no_tensor_back_as_a_number(method, threshold, monkeypatch):
    """The CPU stand-in of the CUDA sync test above: after the first step, the step's Python never
    turns a tensor into a number (each of which waits for the device on CUDA) nor calls bincount
    (which reads its input's maximum back)."""
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, aux_classes=(20,))
    ctx = StepContext(method=MethodConfig(name=method, aux_mode="biamat", pi=0.5, threshold=threshold),
                      attack=AttackConfig(steps=2), in_warmup=False, trunk=model.features, kernel_impl="torch")
    step = TrainStep(model, METHODS[method], torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     torch.amp.GradScaler("cpu", enabled=False), MethodState())
    batches = [make_batch(n_pri=6, aux_sizes=(5,), aux_classes=(20,), seed=s) for s in range(3)]
    step(batches[0], ctx)

    def sync(*args, **kwargs):
        raise AssertionError("the training step read a tensor back to the host")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
            patched.setattr(torch.Tensor, name, sync)
        patched.setattr(torch, "bincount", sync)
        for batch in batches[1:]:
            loss, stats = step(batch, ctx)
    assert stats.routed and torch.isfinite(loss) and 0 < step.state.omega <= 0.5


@pytest.mark.parametrize("choice, compile_choice, drop_last, dynamic, recorded", [
    ("auto", "on", True, False, "false"),  # drop_last: one training batch shape, so static
    ("auto", "on", False, None, "auto"),  # a short last batch: torch's automatic choice
    ("auto", "off", True, None, "auto"),  # nothing is compiled
    ("false", "on", False, False, "false"),
    ("true", "on", True, True, "true"),
])
def test_compile_dynamic_is_resolved_with_drop_last_and_recorded(choice, compile_choice, drop_last, dynamic, recorded):
    rt, resolved = resolve_runtime(RuntimeConfig(device="cpu", compile=compile_choice, compile_dynamic=choice),
                                   drop_last=drop_last)
    assert rt.compile_dynamic is dynamic and resolved.compile_dynamic == recorded
    again, _ = resolve_runtime(resolved, drop_last=drop_last)  # the recorded value means the same
    assert again.compile_dynamic is dynamic


@pytest.mark.parametrize("choice, dynamic", [("false", False), ("true", True), ("auto", None)])
def test_compile_trunk_hands_the_resolved_dynamic_to_torch_compile(choice, dynamic, monkeypatch):
    seen = {}

    def fake_compile(fn, **kwargs):
        seen.update(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = build("wrn-10-1", 10)
    rt, _ = resolve_runtime(RuntimeConfig(device="cpu", compile="reduce-overhead", compile_dynamic=choice))
    assert compile_trunk(model, rt) == model.features
    assert seen == {"mode": "reduce-overhead", "dynamic": dynamic}


def test_the_trainer_resolves_compile_dynamic_with_its_data_drop_last(monkeypatch):
    import engine.trainer as trainer_module
    from engine.config import TrainConfig

    seen = []
    monkeypatch.setattr(trainer_module, "resolve_runtime",
                        lambda cfg, drop_last=False: seen.append(drop_last) or resolve_runtime(cfg, drop_last))
    trainer = object.__new__(trainer_module.Trainer)
    trainer.world_size = 1
    cfg = TrainConfig.from_dict({"data": {"drop_last": True}, "runtime": {"device": "cpu", "compile": "on"}})
    resolved, rt = trainer._resolve(cfg)
    assert seen == [True] and rt.compile_dynamic is False and resolved.runtime.compile_dynamic == "false"


def test_heads_give_float32_logits_under_autocast():
    model = build("wrn-10-1", 10, aux_classes=(7,)).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.features(x)
        pri, (aux,) = model.heads(feats, [1])
        out = model(x)
        raw = model.fc(feats)
    assert raw.dtype == torch.bfloat16  # what the heads returned before: autocast's dtype
    assert pri.dtype == aux.dtype == out.dtype == torch.float32
    assert torch.equal(pri, raw.float()) and aux.shape == (1, 7)
    plain = model.heads(model.features(x))[0]
    assert plain.dtype == torch.float32
