"""AutoAttack through the engine: equal to the package called directly, and resumable."""

import json

import pytest
import torch
import torch.nn as nn

pytest.importorskip("pyautoattack", reason="pip install 'biamat-engine[autoattack]'")

from engine.evaluation.autoattack_runner import run_autoattack  # noqa: E402
from engine.evaluation.robust import robust_mask  # noqa: E402

EPS = 2 / 255
ATTACKS = ("apgd-ce", "apgd-t")


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(16, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one clean mistake
    return model, x, y


def _engine(model, x, y, **kwargs):
    clean = robust_mask(model, x, y, "clean")
    return run_autoattack(model, x, y, clean, eps=EPS, version="custom", attacks=ATTACKS, batch_size=16,
                          seed=0, iterations=3, **kwargs)


def test_engine_equals_pyautoattack_called_directly():
    import pyautoattack

    model, x, y = _model_and_data()
    ours = _engine(model, x, y)

    # The package's attacks built with 3 iterations, as AutoAttack builds them with 100: APGD's
    # step-size schedule is sized by the count it is built with.
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    direct = pyautoattack.AutoAttack(model, attacks=list(ATTACKS), version="custom", eps=EPS, seed=0, device="cpu")
    common = dict(n_iter=3, verbose=False, eps=EPS, norm="Linf", eot_iter=1, rho=.75, seed=0, device="cpu",
                  logger=direct.logger)
    direct.apgd = APGDAttack(model, n_restarts=5, **common)
    direct.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, **common)
    x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=16)
    with torch.no_grad():
        reference = model(x_adv).argmax(1) == y

    assert torch.equal(ours.mask, reference)
    assert 0 < int(reference.sum()) < 15  # the comparison is not between two trivial masks
    assert list(ours.robust_after) == list(ATTACKS)
    assert ours.robust_after["apgd-t"] == int(reference.sum())
    assert ours.robust_after["apgd-ce"] >= ours.robust_after["apgd-t"]


def test_a_quick_run_builds_apgd_with_its_iteration_count():
    """--aa-iterations K gives the schedule APGD has when built with K, not the 100-iteration one."""
    from pyautoattack.autopgd_base import APGDAttack

    from engine.evaluation.autoattack_runner import make_adversary

    model, _, _ = _model_and_data()
    adversary = make_adversary(model, eps=EPS, version="standard", iterations=7)
    built = APGDAttack(model, n_iter=7, eps=EPS, norm="Linf", device="cpu")
    for attack in (adversary.apgd, adversary.apgd_targeted):
        assert [getattr(attack, k) for k in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr")] == \
            [getattr(built, k) for k in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr")]
    assert adversary.fab.n_iter == 7


@pytest.mark.parametrize("version", ["standard", "plus"])
def test_every_attack_runs_on_a_channels_last_model_and_batch(version, monkeypatch):
    """The engine's GPU layout: AutoAttack views inputs and gradients as flat rows, which broke on
    channels-last tensors (apgd-t, apgd-dlr, fab)."""
    from engine.evaluation import autoattack_runner
    from engine.models import build

    def few_queries(*args, **kwargs):  # Square's 5000 queries would take most of the test's time
        adversary = make(*args, **kwargs)
        adversary.square.n_queries = 10
        return adversary

    make = autoattack_runner.make_adversary
    monkeypatch.setattr(autoattack_runner, "make_adversary", few_queries)

    torch.manual_seed(0)
    model = build("wrn-10-1", 10).eval().to(memory_format=torch.channels_last)
    x = torch.rand(6, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x).argmax(1)
    clean = torch.ones(6, dtype=torch.bool)
    # A tiny eps leaves points robust, so every attack of the list runs on some.
    result = run_autoattack(model, x, y, clean, eps=1e-4, version=version, batch_size=6, seed=0, iterations=2)
    assert result.robust_after[result.attacks[-1]] > 0
    assert list(result.robust_after) == result.attacks and len(result.attacks) >= 4


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_from_state(tmp_path):
    model, x, y = _model_and_data()
    state = tmp_path / "aa-state.json"
    uninterrupted = _engine(model, x, y)

    def stop_after_first(attack, n_robust):
        raise Interrupted(attack)

    with pytest.raises(Interrupted):
        _engine(model, x, y, state_path=state, on_attack_done=stop_after_first)
    saved = json.loads(state.read_text())
    assert [d["attack"] for d in saved["done"]] == ["apgd-ce"]
    assert not (tmp_path / "aa-state.json.tmp").exists()

    ran = []
    resumed = _engine(model, x, y, state_path=state, on_attack_done=lambda a, n: ran.append(a))
    assert ran == ["apgd-t"]  # apgd-ce came from the state file
    assert resumed.resumed == ["apgd-ce"]
    assert torch.equal(resumed.mask, uninterrupted.mask)
    assert resumed.robust_after == uninterrupted.robust_after


def test_state_of_another_evaluation_is_refused(tmp_path):
    model, x, y = _model_and_data()
    state = tmp_path / "aa-state.json"
    _engine(model, x, y, state_path=state)
    with pytest.raises(ValueError, match="belongs to another evaluation"):
        _engine(model, x, torch.roll(y, 1), state_path=state)
