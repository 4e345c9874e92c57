"""Training objectives: AT and TRADES under every auxiliary mode, the BiaMAT routing invariants,
the threshold omega, warm-up, and the losses against the formulas of DESIGN.md."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import AttackConfig, ConfigError, MethodConfig
from engine.methods import METHODS, MethodState, StepContext
from engine.models import build

pytestmark = pytest.mark.usefixtures("torch_single_thread")

AUX_CLASSES = {1: (20,), 2: (20, 7)}
AUX_SIZES = {1: (8,), 2: (5, 3)}


def tiny_model(n_aux_sets: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return build("wrn-10-1", 10, AUX_CLASSES[n_aux_sets]).train()


def step(method: str, model, batch, *, state: MethodState | None = None, in_warmup: bool = False,
         seed: int = 0, eps: float = 8 / 255, steps: int = 2, bn_stats: str = "step", **method_kw):
    """One objective call on `model` (mutated: BN statistics), with the attack's RNG seeded."""
    ctx = StepContext(
        method=MethodConfig(name=method, **method_kw),
        attack=AttackConfig(eps=eps, step_size=2 / 255, steps=steps, bn_stats=bn_stats),
        in_warmup=in_warmup, trunk=model.features,
    )
    state = state if state is not None else MethodState()
    torch.manual_seed(seed)
    loss, stats = METHODS[method](model, batch, state, ctx)
    return loss, stats, state


def mean_confidence(model, x) -> float:
    """mean max softmax of h_pri(x) with the model in eval mode (the paper's confidence)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        conf = F.softmax(model(x), 1).amax(1).mean()
    model.train(was)
    return float(conf)


def test_the_registry_holds_exactly_the_methods_the_config_accepts():
    # The names a user is told are valid (the config's refusal lists them) and the objectives the
    # trainer can call must be one set: a method in one but not the other fails at run time.
    with pytest.raises(ConfigError, match="expected one of ") as refused:
        MethodConfig(name="no-such-method")
    accepted = str(refused.value).split("expected one of ")[1].split(", ")
    assert set(METHODS) == set(accepted)


@pytest.mark.parametrize("n_aux_sets", [1, 2])
@pytest.mark.parametrize("aux_mode", ["none", "labels", "uniform", "biamat"])
@pytest.mark.parametrize("method", ["at", "trades", "standard"])
def test_every_method_and_aux_mode_gives_a_finite_loss_and_consistent_stats(method, aux_mode, n_aux_sets, batch_factory):
    model = tiny_model(n_aux_sets)
    batch = batch_factory(aux_sizes=AUX_SIZES[n_aux_sets], aux_classes=AUX_CLASSES[n_aux_sets])
    before = copy.deepcopy(model)  # the step moves BatchNorm statistics; the selection saw these
    loss, stats, state = step(method, model, batch, aux_mode=aux_mode, pi=1.0)
    assert loss.shape == () and torch.isfinite(loss) and loss.requires_grad
    assert torch.isfinite(stats.loss_pri) and float(stats.loss) == float(loss.detach())
    loss.backward()
    aux_grads = [p.grad for p in model.aux_fc.parameters()]
    if aux_mode == "none":
        assert float(stats.loss) == float(stats.loss_pri)
        assert stats.n_aux == 0 and not stats.routed
        assert all(g is None for g in aux_grads)  # the auxiliary data is ignored entirely
        return
    n_aux = sum(AUX_SIZES[n_aux_sets])
    assert stats.n_aux == n_aux
    # The count against the selection written out from its definition (every sample high for
    # labels, none for uniform, max softmax >= pi * the primary batch's mean confidence for biamat).
    high = reference_high_mask(before, batch, aux_mode, pi=1.0)  # (Ba,) bool
    assert int(stats.n_high) == int(high.sum())
    assert float(stats.loss) == pytest.approx(float(stats.loss_pri + stats.loss_low + stats.loss_high), rel=1e-5)
    assert stats.routed == (aux_mode == "biamat")
    assert (state.omega is not None) == (aux_mode == "biamat")
    if aux_mode == "biamat":
        seen, high_per_class = stats.seen_per_class, stats.high_per_class
        assert [len(s) for s in seen] == list(AUX_CLASSES[n_aux_sets])
        for s, h, y, chosen in zip(seen, high_per_class, batch.y_aux.split(AUX_SIZES[n_aux_sets]),
                                   high.split(AUX_SIZES[n_aux_sets])):
            assert torch.equal(s, torch.bincount(y, minlength=len(s)))
            assert torch.equal(h, torch.bincount(y[chosen], minlength=len(s)))
    if aux_mode == "labels":  # every auxiliary dataset trains its own head
        assert all(g is not None and g.abs().sum() > 0 for g in aux_grads)


def reference_aux_losses(model, feats_aux, logits_pri_aux, batch, high):
    """Per auxiliary sample: CE(f_aux_i, y) where high, soft-CE(f_pri, uniform) where low."""
    out, start = [], 0
    for head, n in zip(model.aux_fc, batch.aux_sizes):
        sl = slice(start, start + n)
        ce_high = F.cross_entropy(head(feats_aux[sl]), batch.y_aux[sl], reduction="none")
        ce_uniform = -F.log_softmax(logits_pri_aux[sl], 1).mean(1)
        out.append(torch.where(high[sl], ce_high, ce_uniform))
        start += n
    return torch.cat(out)


def reference_high_mask(model, batch, aux_mode: str, pi: float) -> torch.Tensor:
    n_aux = len(batch.y_aux)
    if aux_mode == "labels":
        return torch.ones(n_aux, dtype=torch.bool)
    if aux_mode == "uniform":
        return torch.zeros(n_aux, dtype=torch.bool)
    omega = pi * mean_confidence(model, batch.x_pri)
    model.eval()
    with torch.no_grad():
        conf = F.softmax(model(batch.x_aux), 1).amax(1)
    model.train()
    return conf >= omega


@pytest.mark.parametrize("method", ["at", "standard"])
@pytest.mark.parametrize("aux_mode", ["labels", "uniform", "biamat"])
def test_at_and_standard_loss_is_the_design_formula(method, aux_mode, batch_factory):
    # With eps = 0 and no attack steps, x_adv = x and the loss can be written out by hand
    # (standard training never attacks):
    # mean primary CE + alpha * (sum of routed auxiliary losses) / |B_aux|, one forward of [x_pri; x_aux].
    model, batch = tiny_model(2), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    ref = copy.deepcopy(model)
    high = reference_high_mask(ref, batch, aux_mode, pi=1.0)
    if aux_mode == "biamat":
        assert 0 < int(high.sum()) < len(high)  # a real mix of routes, or the test proves little
    with torch.no_grad():
        feats = ref.features(torch.cat([batch.x_pri, batch.x_aux]))  # (B + Ba, D), train-mode BN
        logits = ref.fc(feats)
        n = len(batch.y_pri)
        loss_pri = F.cross_entropy(logits[:n], batch.y_pri)
        aux = reference_aux_losses(ref, feats[n:], logits[n:], batch, high)  # (Ba,)
        expected = loss_pri + 0.7 * aux.sum() / len(aux)

    loss, stats, _ = step(method, model, batch, aux_mode=aux_mode, pi=1.0, alpha=0.7, eps=0.0, steps=0)
    assert int(stats.n_high) == int(high.sum())
    assert float(stats.loss_pri) == pytest.approx(float(loss_pri), rel=1e-5)
    assert float(stats.loss_high) == pytest.approx(float((aux * high).sum() / len(aux)), rel=1e-5, abs=1e-7)
    assert float(stats.loss_low) == pytest.approx(float((aux * ~high).sum() / len(aux)), rel=1e-5, abs=1e-7)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("in_warmup", [False, True])
@pytest.mark.parametrize("aux_mode", ["none", "labels", "uniform", "biamat"])
def test_standard_training_is_at_without_the_attack(aux_mode, in_warmup, batch_factory):
    # The invariant: AT with eps = 0 and no attack steps trains on the clean batch, so its loss,
    # statistics, weight gradients, BatchNorm statistics and omega are standard training's,
    # whatever the standard step's own attack settings say (it ignores them).
    batch = batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    results = []
    for method, eps, steps in (("at", 0.0, 0), ("standard", 8 / 255, 10)):
        model = tiny_model(2)
        loss, stats, state = step(method, model, batch, aux_mode=aux_mode, pi=0.9, alpha=0.7,
                                  in_warmup=in_warmup, eps=eps, steps=steps)
        loss.backward()
        results.append((model, loss, stats, state))
    (at_model, at_loss, at_stats, at_state), (st_model, st_loss, st_stats, st_state) = results
    assert torch.equal(at_loss, st_loss)
    assert (at_stats.n_aux, int(at_stats.n_high), at_stats.routed) == (st_stats.n_aux, int(st_stats.n_high),
                                                                      st_stats.routed)
    assert float(at_stats.loss_low) == float(st_stats.loss_low)
    assert float(at_stats.loss_high) == float(st_stats.loss_high)
    assert at_state.omega == st_state.omega
    assert (at_state.omega is not None) == (aux_mode == "biamat" and not in_warmup)
    for (name, a), (_, b) in zip(at_model.named_parameters(), st_model.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name
    for (name, a), (_, b) in zip(at_model.named_buffers(), st_model.named_buffers()):
        assert torch.equal(a, b), name


def test_standard_training_moves_the_running_statistics_once_per_step(batch_factory):
    # One training forward in train mode, nothing else (the biamat scoring runs in eval mode).
    model, batch = tiny_model(2), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    step("standard", model, batch, aux_mode="biamat", pi=0.9)
    assert int(model.bn1.num_batches_tracked) == 1


@pytest.mark.parametrize("high_loss", ["trades", "ce"])
@pytest.mark.parametrize("aux_mode", ["labels", "uniform", "biamat"])
def test_trades_loss_is_the_design_formula_without_perturbation(aux_mode, high_loss, batch_factory):
    # With eps = 0 the adversarial point is the clean one, every KL term vanishes and the loss is
    # CE(primary) + alpha/|B_aux| * [soft-CE(uniform) on low; CE(y_aux) on high].
    model, batch = tiny_model(2), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    ref = copy.deepcopy(model)
    high = reference_high_mask(ref, batch, aux_mode, pi=1.0)
    with torch.no_grad():
        feats = ref.features(torch.cat([batch.x_pri, batch.x_aux]))  # (B + Ba, D), train-mode BN
        logits = ref.fc(feats)
        n = len(batch.y_pri)
        aux = reference_aux_losses(ref, feats[n:], logits[n:], batch, high)  # (Ba,)
        expected = F.cross_entropy(logits[:n], batch.y_pri) + 0.5 * aux.sum() / len(aux)

    loss, stats, _ = step("trades", model, batch, aux_mode=aux_mode, pi=1.0, alpha=0.5, high_loss=high_loss,
                          eps=0.0, steps=1)
    assert int(stats.n_high) == int(high.sum())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("method", ["at", "trades"])
def test_pi_zero_routes_everything_high_and_equals_labels_mode(method, batch_factory):
    batch = batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    loss_b, stats_b, state = step(method, tiny_model(), batch, aux_mode="biamat", pi=0.0)
    loss_l, stats_l, _ = step(method, tiny_model(), batch, aux_mode="labels")
    assert state.omega == 0.0 and stats_b.routed
    assert int(stats_b.n_high) == len(batch.y_aux)
    assert float(loss_b.detach()) == pytest.approx(float(loss_l.detach()), rel=1e-6)
    assert float(stats_b.loss_high) == pytest.approx(float(stats_l.loss_high), rel=1e-6)
    assert float(stats_b.loss_low) == 0.0


@pytest.mark.parametrize("method", ["at", "trades"])
def test_huge_pi_routes_everything_low_and_equals_uniform_mode(method, batch_factory):
    batch = batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    loss_b, stats_b, state = step(method, tiny_model(), batch, aux_mode="biamat", pi=1e6)
    loss_u, stats_u, _ = step(method, tiny_model(), batch, aux_mode="uniform")
    assert state.omega > 1.0 and int(stats_b.n_high) == 0
    assert float(loss_b.detach()) == pytest.approx(float(loss_u.detach()), rel=1e-6)
    assert float(stats_b.loss_low) == pytest.approx(float(stats_u.loss_low), rel=1e-6)
    assert float(stats_b.loss_high) == 0.0
    assert [int(h.sum()) for h in stats_b.high_per_class] == [0, 0]


def sgd_update(model, loss) -> None:
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
                p.grad = None


@pytest.mark.parametrize("method", ["at", "trades"])
def test_omega_is_set_after_warmup_from_the_clean_primary_batch_in_eval_mode_then_frozen(method, batch_factory):
    model = tiny_model()
    first, second = batch_factory(seed=1, aux_sizes=(5, 3), aux_classes=(20, 7)), batch_factory(
        seed=2, aux_sizes=(5, 3), aux_classes=(20, 7))
    state = MethodState()
    loss, stats, _ = step(method, model, first, state=state, in_warmup=True, aux_mode="biamat", pi=0.55)
    assert state.omega is None and not stats.routed
    sgd_update(model, loss)

    expected = 0.55 * mean_confidence(model, first.x_pri)
    with torch.no_grad():  # train-mode BatchNorm would give another value
        train_mode = 0.55 * float(F.softmax(copy.deepcopy(model).train()(first.x_pri), 1).amax(1).mean())
    assert abs(train_mode - expected) > 1e-4
    loss, stats, _ = step(method, model, first, state=state, aux_mode="biamat", pi=0.55)
    assert stats.routed
    assert state.omega == pytest.approx(expected, rel=1e-5)
    omega = state.omega

    sgd_update(model, loss)
    assert 0.55 * mean_confidence(model, second.x_pri) != pytest.approx(omega, rel=1e-4)
    step(method, model, second, state=state, aux_mode="biamat", pi=0.55)
    assert state.omega == omega  # frozen, as the paper


def test_ema_threshold_is_re_estimated_every_step(batch_factory):
    model = tiny_model()
    batches = [batch_factory(seed=s, aux_sizes=(5, 3), aux_classes=(20, 7)) for s in (1, 2)]
    state = MethodState()
    expected_first = 0.5 * mean_confidence(model, batches[0].x_pri)  # before the step moves BN statistics
    loss, _, _ = step("at", model, batches[0], state=state, aux_mode="biamat", pi=0.5, threshold="ema",
                      ema_momentum=0.5)
    first = state.omega
    assert first == pytest.approx(expected_first, rel=1e-5)  # the first estimate is not averaged
    sgd_update(model, loss)
    fresh = 0.5 * mean_confidence(model, batches[1].x_pri)
    step("at", model, batches[1], state=state, aux_mode="biamat", pi=0.5, threshold="ema", ema_momentum=0.5)
    assert state.omega != first
    assert state.omega == pytest.approx(0.5 * first + 0.5 * fresh, rel=1e-5)


@pytest.mark.parametrize("method", ["at", "trades"])
def test_during_warmup_the_auxiliary_loss_weight_is_zero(method, batch_factory):
    # The selection's warm-up (biamat mode; the trainer gives the other modes none).
    model, batch = tiny_model(), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    loss, stats, state = step(method, model, batch, in_warmup=True, aux_mode="biamat", pi=0.55)
    assert float(loss.detach()) == float(stats.loss_pri)
    assert float(stats.loss_high + stats.loss_low) > 0  # computed and reported, just not weighted
    assert state.omega is None and not stats.routed
    assert int(stats.n_high) == len(batch.y_aux)  # warm-up attacks every auxiliary sample as high
    loss.backward()
    for p in model.aux_fc.parameters():
        assert p.grad is None or not p.grad.any()


def test_trades_high_loss_ce_differs_from_trades(batch_factory):
    batch = batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    _, trades, _ = step("trades", tiny_model(), batch, aux_mode="labels", high_loss="trades")
    _, ce, _ = step("trades", tiny_model(), batch, aux_mode="labels", high_loss="ce")
    assert torch.isfinite(ce.loss_high) and float(ce.loss_high) > 0
    assert float(trades.loss_high) != pytest.approx(float(ce.loss_high), rel=1e-3)
    # The primary objective does not depend on the high-sample loss choice beyond the attack.
    assert float(trades.loss_low) == float(ce.loss_low) == 0.0


@pytest.mark.parametrize("method", ["at", "trades"])
def test_aux_mode_none_equals_a_batch_without_auxiliary_data(method, batch_factory):
    with_aux = batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    without = batch_factory(aux_sizes=(), aux_classes=())
    assert torch.equal(with_aux.x_pri, without.x_pri)  # same generator, primary drawn first
    loss_a, _, _ = step(method, tiny_model(), with_aux, aux_mode="none")
    loss_b, _, _ = step(method, tiny_model(), without, aux_mode="biamat")
    assert float(loss_a.detach()) == float(loss_b.detach())


def folded(batch):
    """The batch as plain AT/TRADES would see [x_pri; x_aux] with labels [y_pri; y_aux]."""
    from loaders.types import Batch

    return Batch(x_pri=torch.cat([batch.x_pri, batch.x_aux]), y_pri=torch.cat([batch.y_pri, batch.y_aux]),
                 x_aux=batch.x_aux[:0], y_aux=batch.y_aux[:0], aux_source=batch.aux_source[:0])


@pytest.mark.parametrize("in_warmup", [False, True])
@pytest.mark.parametrize("method", ["at", "trades"])
def test_pseudo_mode_is_the_plain_objective_on_the_concatenated_batch(method, in_warmup, batch_factory):
    # Carmon et al.'s RST: pseudo-labelled auxiliary samples (labels in the primary classes) get
    # the primary loss through f_pri; no head f_aux, no routing, no alpha, no warm-up.
    batch = batch_factory(aux_sizes=(8,), aux_classes=(10,))
    pseudo_model, plain_model = tiny_model(1), tiny_model(1)
    loss_p, stats_p, state = step(method, pseudo_model, batch, aux_mode="pseudo", alpha=0.3, pi=1.0,
                                  in_warmup=in_warmup)
    loss_n, stats_n, _ = step(method, plain_model, folded(batch), aux_mode="none")
    assert float(loss_p.detach()) == pytest.approx(float(loss_n.detach()), rel=1e-6)
    assert float(stats_p.loss_pri) == pytest.approx(float(stats_n.loss_pri), rel=1e-6)
    assert stats_p.n_aux == 0 and not stats_p.routed and state.omega is None
    assert float(stats_p.loss_low) == float(stats_p.loss_high) == 0.0
    loss_p.backward()
    loss_n.backward()
    for (name, a), b in zip(pseudo_model.named_parameters(), plain_model.parameters()):
        if name.startswith("aux_fc."):
            assert a.grad is None  # the auxiliary head is not trained
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    for a, b in zip(pseudo_model.buffers(), plain_model.buffers()):
        torch.testing.assert_close(a, b)  # the same BatchNorm statistics: one batch of B + Ba


@pytest.mark.parametrize("method", ["at", "trades"])
def test_pseudo_mode_without_perturbation_is_the_mean_ce_over_both_halves(method, batch_factory):
    # eps = 0: AT is CE on the clean batch, TRADES too (its KL term vanishes); the mean runs over
    # the primary and the pseudo-labelled samples alike, in one train-mode forward.
    batch = batch_factory(aux_sizes=(8,), aux_classes=(10,))
    model = tiny_model(1)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        expected = F.cross_entropy(ref(torch.cat([batch.x_pri, batch.x_aux])), torch.cat([batch.y_pri, batch.y_aux]))
    loss, _, _ = step(method, model, batch, aux_mode="pseudo", eps=0.0, steps=0 if method == "at" else 1)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_the_attack_moves_the_training_loss(batch_factory):
    # The same batch with and without the attack: adversarial training must see a larger loss.
    batch = batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    attacked, _, _ = step("at", tiny_model(), batch, aux_mode="labels", steps=3)
    clean, _, _ = step("at", tiny_model(), batch, aux_mode="labels", eps=0.0, steps=0)
    assert float(attacked.detach()) > float(clean.detach())


# ---- BatchNorm running statistics: how many momentum updates one training step makes ----------

FAR_OFF = 1000.0


def momentum_updates(model, batch, method: str, **kw) -> set[int]:
    """Sets every BatchNorm running mean and variance to FAR_OFF, runs one objective call with a
    PGD-10 attack and returns the number of momentum-0.1 updates each statistic shows.

    k updates leave 0.9^k * FAR_OFF plus 0.1-weighted batch statistics of order 1, so k reads off
    the mean and the variance themselves (not num_batches_tracked, which a momentum-0 trick
    would still count)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.running_mean.fill_(FAR_OFF)
        m.running_var.fill_(FAR_OFF)
    step(method, model, batch, steps=10, **kw)
    counts = set()
    for m in bns:
        for stat in (m.running_mean, m.running_var):
            k = torch.log(stat / FAR_OFF) / math.log(0.9)  # (C,)
            assert torch.allclose(k, k.round(), atol=0.05), f"not a whole number of updates: {k}"
            counts |= set(k.round().int().tolist())
    return counts


@pytest.mark.parametrize("aux_mode", ["biamat", "labels", "none"])
def test_at_updates_the_batchnorm_statistics_once_per_step_as_the_reference(aux_mode, batch_factory):
    # The reference's BatchNorm update ops run with the train op only: the training forward on
    # the adversarial batch moves the running statistics, the 10 attack forwards do not.
    model, batch = tiny_model(), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    before = [m.num_batches_tracked.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert momentum_updates(model, batch, "at", aux_mode=aux_mode, pi=1.0) == {1}
    after = [m.num_batches_tracked for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(int(a - b) == 1 for a, b in zip(after, before))
    assert model.training and all(m.track_running_stats for m in model.modules()
                                  if isinstance(m, torch.nn.BatchNorm2d))


def test_at_every_forward_keeps_the_attack_updating_the_statistics(batch_factory):
    model, batch = tiny_model(), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    assert momentum_updates(model, batch, "at", aux_mode="labels", bn_stats="every_forward") == {11}


@pytest.mark.parametrize("bn_stats", ["step", "every_forward"])
def test_trades_updates_the_statistics_twice_per_step_as_the_reference(bn_stats, batch_factory):
    # Attack in eval mode; the clean and the adversarial training forwards each update once.
    model, batch = tiny_model(), batch_factory(aux_sizes=(5, 3), aux_classes=(20, 7))
    assert momentum_updates(model, batch, "trades", aux_mode="biamat", pi=1.0, bn_stats=bn_stats) == {2}


@pytest.mark.parametrize("n, classes", [(0, 5), (1, 1), (7, 3), (129, 17), (1000, 1000)])
def test_count_per_class_is_bincount_without_the_host_sync(n, classes):
    from engine.methods.routing import count_per_class

    g = torch.Generator().manual_seed(n + classes)
    y = torch.randint(0, classes, (n,), generator=g)
    for mask in (torch.rand(n, generator=g) < 0.5, torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)):
        counts = count_per_class(y, classes, mask)
        assert counts.dtype == torch.int64 and counts.shape == (classes,)
        assert torch.equal(counts, torch.bincount(y, weights=mask.float(), minlength=classes).long())
    seen = count_per_class(y, classes)
    assert torch.equal(seen, torch.bincount(y, minlength=classes)) and int(seen.sum()) == n


def test_omega_is_a_device_tensor_in_the_step_and_a_number_outside():
    state = MethodState()
    assert state.omega is None and state.threshold(torch.device("cpu")) is None
    state.set_threshold(torch.tensor(0.25, dtype=torch.float32) * 2)
    kept = state.threshold(torch.device("cpu"))
    assert isinstance(kept, torch.Tensor) and kept.dtype == torch.float64 and kept.dim() == 0
    assert state.threshold(torch.device("cpu")) is kept  # no copy while it stays on its device
    assert state.omega == 0.5 and isinstance(state.omega, float)
    assert state.state_dict() == {"omega": 0.5, "warmup_ended": None}  # plain numbers in checkpoints
    resumed = MethodState()
    resumed.load_state_dict(state.state_dict())
    assert resumed.omega == 0.5 and isinstance(resumed.threshold(torch.device("cpu")), torch.Tensor)
    resumed.load_state_dict({"omega": None})
    assert resumed.omega is None


@pytest.mark.parametrize("threshold", ["frozen", "ema"])
def test_routing_never_reads_omega_back_as_a_number(threshold, batch_factory, monkeypatch):
    # Reading `omega` waits for the device on CUDA; the step must use the tensor only.
    model = tiny_model()
    state = MethodState()
    number = MethodState.omega

    def refuse(self):
        raise AssertionError("the step read omega back as a number (a host sync on CUDA)")

    monkeypatch.setattr(MethodState, "omega", property(refuse, number.fset))
    for seed in (1, 2):
        _, stats, _ = step("at", model, batch_factory(seed=seed, aux_sizes=(5, 3), aux_classes=(20, 7)),
                           state=state, aux_mode="biamat", pi=0.5, threshold=threshold, ema_momentum=0.5)
        assert stats.routed and isinstance(state.threshold(torch.device("cpu")), torch.Tensor)
    monkeypatch.setattr(MethodState, "omega", number)
    assert 0 < state.omega <= 0.5
