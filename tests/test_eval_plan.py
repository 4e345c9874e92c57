"""eps and step size are resolved once, in the evaluation plan (`EvalPlan.resolved`): a given
value stays, a missing one is the run's, else the default, each with where it came from."""

from __future__ import annotations

import pytest

from engine.config import load_config, to_toml
from engine.evaluation.plan import EvalPlan


@pytest.fixture
def run(tmp_path):
    (tmp_path / "config.toml").write_text(to_toml(load_config("demo", overrides={"attack.eps": "4/255",
                                                                                  "eval.step_size": 0.003})))
    return tmp_path


def test_what_the_plan_leaves_out_is_the_runs_and_says_so(run):
    plan = EvalPlan(attacks=("clean",)).resolved(run)
    assert (plan.eps, plan.step_size) == (pytest.approx(4 / 255), 0.003)
    assert plan.eps_source == f"{run / 'config.toml'} [attack] eps"
    assert plan.step_size_source == f"{run / 'config.toml'} [eval] step_size"
    assert plan.resolved(None) == plan  # once resolved, it stays


def test_a_given_value_wins_and_without_a_run_the_defaults_apply(run):
    given = EvalPlan(attacks=("clean",), eps=2 / 255).resolved(run)
    assert (given.eps, given.eps_source) == (2 / 255, "option") and given.step_size == 0.003
    bare = EvalPlan(attacks=("clean",)).resolved(None)
    assert (bare.eps, bare.eps_source, bare.step_size, bare.step_size_source) == \
        (pytest.approx(8 / 255), "default", pytest.approx(2 / 255), "default")


def test_the_plan_still_refuses_an_eps_outside_the_unit_range():
    with pytest.raises(ValueError, match="eps must lie in"):
        EvalPlan(attacks=("clean",), eps=2.0)
