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

    direct = pyautoattack.AutoAttack(model, attacks=list(ATTACKS), version="custom", eps=EPS, seed=0, device="cpu")
    direct.apgd.n_iter = direct.apgd_targeted.n_iter = 3
    x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=16)
    with torch.no_grad():
        reference = model(x_adv).argmax(1) == y

    assert torch.equal(ours.mask, reference)
    assert 0 < int(reference.sum()) < 15  # the comparison is not between two trivial masks
    assert list(ours.robust_after) == list(ATTACKS)
    assert ours.robust_after["apgd-t"] == int(reference.sum())
    assert ours.robust_after["apgd-ce"] >= ours.robust_after["apgd-t"]


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
