"""The configuration tree: overrides and fractions parse, base presets resolve, bad values fail
naming the key, and the TOML written to a run directory reads back to the same tree.
(The presets' values against the paper: tests/test_presets.py.)"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import tomllib
from fractions import Fraction

import pytest

from engine import config as config_module
from engine.config import (
    ConfigError, TrainConfig, apply_overrides, load_config, load_preset, parse_number, to_toml,
)
from engine.evaluation.report import parse_eps


def test_set_overrides_parse_fractions_lists_bools_and_strings():
    cfg = load_config(preset="cifar10-at-biamat-imagenet", overrides=[
        "attack.eps=8/255", "attack.step_size=2/255", "optim.milestones=100,105",
        "runtime.channels_last=false", "optim.nesterov=yes", "data.aux=a.beton,b.beton",
        "data.aux_batch_size=64", "method.pi=0.3", "optim.epochs=7", "model.name=wrn-16-4",
    ])
    assert cfg.attack.eps == 8 / 255
    assert cfg.attack.step_size == 2 / 255
    assert cfg.optim.milestones == [100.0, 105.0]
    assert cfg.runtime.channels_last is False and cfg.optim.nesterov is True
    assert cfg.data.aux == ["a.beton", "b.beton"]
    assert (cfg.data.aux_batch_size, cfg.method.pi, cfg.optim.epochs) == (64, 0.3, 7)
    assert cfg.model.name == "wrn-16-4"
    # Untouched keys keep the preset's values.
    assert cfg.method.alpha == 1.0 and cfg.optim.weight_decay == 2e-4


def test_overrides_do_not_mutate_their_input():
    data = {"method": {"pi": 0.5}}
    apply_overrides(data, ["method.pi=0.1"])
    assert data == {"method": {"pi": 0.5}}


def test_an_empty_list_override_clears_the_list():
    assert load_config(preset="cifar10-at-biamat-svhn", overrides=["data.aux=", "method.aux_mode=none"]).data.aux == []


@pytest.mark.parametrize("override, names", [
    ("method.name=sgd", ["method.name", "at, trades, standard"]),
    ("method.aux_mode=all", ["method.aux_mode", "biamat"]),
    ("method.threshold=mean", ["method.threshold"]),
    ("method.high_loss=kl", ["method.high_loss"]),
    ("data.loader=pil", ["data.loader", "resident"]),
    ("runtime.precision=fp8", ["runtime.precision"]),
    ("runtime.device=tpu", ["runtime.device"]),
    ("method.pi=-0.1", ["method.pi", "[0.0, inf]"]),
    ("method.ema_momentum=1.5", ["method.ema_momentum"]),
    ("attack.eps=2", ["attack.eps"]),
    ("optim.epochs=0", ["optim.epochs"]),
    ("optim.milestones=50,-1", ["optim.milestones"]),
    ("data.batch_size=0", ["data.batch_size"]),
    ("eval.n=0", ["eval.n"]),
    ("model.dropout=1", ["model.dropout"]),
    ("model.name=resnet18", ["model.name", "wrn-DEPTH-WIDTH", "resnet-18"]),
    ("model.name=resnet-50", ["model.name", "[18, 34]"]),
    ("model.name=wrn-27-10", ["model.name", "6n+4"]),
    ("model.normalization=per-pixel", ["model.normalization", "per-image", "primary"]),
    ("optim.epochs=ten", ["optim.epochs", "int"]),
    ("optim.lr=fast", ["optim.lr", "float"]),
    ("attack.eps=8/0", ["attack.eps", "float"]),
    ("attack.eps=0.5/x", ["attack.eps", "float"]),
    ("runtime.channels_last=maybe", ["runtime.channels_last", "bool"]),
    ("method.pie=0.5", ["pie", "method"]),
    ("optimizer.lr=0.1", ["optimizer", "top level"]),
    ("method.pi", ["section.key=value"]),
    ("pi=0.5", ["section.key"]),
    ("method.pi.value=0.5", ["section.key"]),
])
def test_bad_values_raise_config_error_naming_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    for name in names:
        assert name in str(err.value)


def test_dropout_on_a_resnet_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="model.dropout = 0.3: resnet-18 has no dropout"):
        load_config(overrides=["model.name=resnet-18", "model.dropout=0.3"])
    assert load_config(overrides=["model.name=resnet-18"]).model.name == "resnet-18"


def test_wrong_types_in_a_toml_table_name_the_key():
    with pytest.raises(ConfigError, match=r"eval\.n = 2\.5: expected a int"):
        TrainConfig.from_dict({"eval": {"n": 2.5}})
    with pytest.raises(ConfigError, match=r"model\.name = 5: expected a str"):
        TrainConfig.from_dict({"model": {"name": 5}})
    with pytest.raises(ConfigError, match=r"optim\.milestones .*expected a list"):
        TrainConfig.from_dict({"optim": {"milestones": 60}})
    with pytest.raises(ConfigError, match="optim must be a table"):
        TrainConfig.from_dict({"optim": 3})


def test_a_toml_bool_is_rejected_for_an_int_field():
    with pytest.raises(ConfigError, match=r"optim\.epochs = True"):
        TrainConfig.from_dict({"optim": {"epochs": True}})


def test_a_toml_integer_is_accepted_for_a_float_field():
    cfg = TrainConfig.from_dict({"method": {"alpha": 1}})
    assert cfg.method.alpha == 1.0 and isinstance(cfg.method.alpha, float)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="warmup_epochs = 5 leaves no epoch after warm-up"):
        load_config(overrides=["data.aux=a.beton", "optim.epochs=5"])
    with pytest.raises(ConfigError, match="aux_batch_size = 1 is smaller than the 2 auxiliary datasets"):
        load_config(overrides=["data.aux=a.beton,b.beton", "data.aux_batch_size=1"])


def test_unknown_preset_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'cifar11-at'.*cifar10-at"):
        load_config(preset="cifar11-at")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(file=bad)
    with pytest.raises(ConfigError, match="not both"):
        load_config(preset="demo", file=bad)


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(to_toml(load_config(preset="cifar10-trades-biamat-imagenet")))
    cfg = load_config(file=path, overrides=["method.pi=0.45"])
    assert cfg.method.pi == 0.45
    assert cfg.model.name == "wrn-34-10"


def test_toml_round_trip_of_awkward_values():
    cfg = load_config(overrides=[
        "attack.eps=8/255", "data.aux=with \"quotes\".beton,dir/b.beton", "optim.milestones=",
        "runtime.seed=123456789", "method.ema_momentum=0.999",
    ])
    text = to_toml(cfg)
    again = TrainConfig.from_dict(tomllib.loads(text))
    assert again == cfg
    assert again.attack.eps == 8 / 255  # floats are written with repr: not a digit lost


def test_every_field_has_a_docstring():
    # A docstring under each field is the config's documentation (STYLE.md).
    tree = ast.parse(inspect.getsource(config_module))
    documented = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for stmt, after in zip(cls.body, cls.body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                documented.add((cls.name, stmt.target.id))
    sections = [f.type for f in dataclasses.fields(TrainConfig)]
    for section in sections:
        cls = getattr(config_module, section) if isinstance(section, str) else section
        for f in dataclasses.fields(cls):
            assert (cls.__name__, f.name) in documented, f"{cls.__name__}.{f.name} has no docstring"


def test_parse_number_divides_fractions_exactly():
    assert parse_number("8/255") == 8 / 255 and parse_number(" 2/255 ") == 2 / 255
    assert parse_number("0.031") == 0.031 and parse_number("2e-4") == 2e-4 and parse_number(7) == 7.0
    # 0.7 / 3 in floats rounds twice (0.2333...33); the exact 7/30 rounds once (0.2333...34).
    assert parse_number("0.7/3") == float(Fraction(7, 30)) != 0.7 / 3
    assert parse_number("0.5/255") == float(Fraction(1, 510))
    for bad in ("8/0", "8/255/3", "eight", "8/", "/255", ""):
        with pytest.raises(ValueError, match="fraction such as 8/255"):
            parse_number(bad)


def test_eval_reads_eps_with_the_config_reader():
    assert parse_eps("0.7/3") == parse_number("0.7/3")  # one reader: no second rounding rule
    assert parse_eps("8/255") == load_config(preset="cifar10-at").attack.eps
    with pytest.raises(ValueError, match="cannot read eps 'eight'"):
        parse_eps("eight")


def test_fractions_are_read_in_toml_files_and_lists(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[attack]\neps = "8/255"\nstep_size = "0.5/255"\n[optim]\nmilestones = ["3/5", 90]\n')
    cfg = load_config(file=path)
    assert (cfg.attack.eps, cfg.attack.step_size) == (8 / 255, 0.5 / 255)
    assert cfg.optim.milestones == [0.6, 90.0]
    path.write_text('[attack]\neps = "8/0"\n')
    with pytest.raises(ConfigError, match=r"attack\.eps = '8/0': expected a float \(or a fraction such as 8/255\)"):
        load_config(file=path)


def test_a_config_file_may_start_from_a_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('base = "cifar100-trades-biamat-imagenet"\n[method]\npi = 0.45\n[data]\naux = []\n')
    cfg = load_config(file=path)
    expected = load_config(preset="cifar100-trades-biamat-imagenet", overrides=["method.pi=0.45", "data.aux="])
    assert cfg == expected
    assert cfg.method.high_loss == "ce" and cfg.optim.milestone_epochs() == [99, 104]  # kept from the chain


def test_base_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "run.toml"
    path.write_text('base = "cifar11-at"\n')
    with pytest.raises(ConfigError, match=r"run\.toml: base = 'cifar11-at' is not a preset; available: .*cifar10-at"):
        load_config(file=path)
    path.write_text("base = 3\n")
    with pytest.raises(ConfigError, match=r"run\.toml: base = 3: expected a preset name"):
        load_config(file=path)
    # A loop among presets: a -> b -> a (the folder stands in for engine/presets).
    folder = tmp_path / "engine" / "presets"
    folder.mkdir(parents=True)
    (folder / "a.toml").write_text('base = "b"\n')
    (folder / "b.toml").write_text('base = "a"\n')
    (folder / "c.toml").write_text('base = "c"\n')
    monkeypatch.setattr(config_module.resources, "files", lambda package: tmp_path / package)
    with pytest.raises(ConfigError, match=r"preset 'b': the base presets form a cycle: a -> b -> a"):
        load_preset("a")
    with pytest.raises(ConfigError, match=r"the base presets form a cycle: c -> c"):
        load_preset("c")
    path.write_text('base = "a"\n')
    with pytest.raises(ConfigError, match=r"cycle: a -> b -> a"):
        load_config(file=path)


def test_a_base_section_is_merged_key_by_key_and_lists_are_replaced():
    data = config_module.resolve_base(
        {"base": "cifar10-at", "optim": {"milestones": [50]}, "method": {"pi": 0.1}}, "test"
    )
    preset = load_preset("cifar10-at")
    assert data["optim"] == {**preset["optim"], "milestones": [50]}
    assert data["method"] == {**preset["method"], "pi": 0.1}
    assert "base" not in data and data["attack"] == preset["attack"]


def test_writing_config_toml_without_tomli_w_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tomli_w", None)  # what `import tomli_w` sees where it is missing
    with pytest.raises(ImportError, match="pip install tomli-w"):
        to_toml(TrainConfig())


def test_config_toml_reads_back_exactly_what_fractions_gave():
    cfg = load_config(overrides=["attack.eps=0.7/3", "attack.step_size=2/255", "optim.milestones=3/5,0.9"])
    again = TrainConfig.from_dict(tomllib.loads(to_toml(cfg)))
    assert again == cfg and again.attack.eps == float(Fraction(7, 30))


@pytest.mark.parametrize("override, key", [
    ("attack.eps=nan", "attack.eps"), ("optim.lr=inf", "optim.lr"), ("method.alpha=nan", "method.alpha"),
    ("optim.milestones=0.5,nan", "optim.milestones"), ("optim.weight_decay=-inf", "optim.weight_decay"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config("demo", overrides=[override])


def test_per_image_normalisation_is_a_choice_and_a_config_toml_without_the_key_reads_as_before(tmp_path):
    from engine.run_dir import read_config

    assert load_config(overrides=["model.normalization=per-image"]).model.normalization == "per-image"
    # A run directory written before the key existed (its config.toml has no model.normalization)
    # resolves to what those runs used: the primary data's per-channel statistics.
    old = load_config(preset="cifar10-at").to_dict()
    del old["model"]["normalization"]
    (tmp_path / "config.toml").write_text(to_toml(TrainConfig.from_dict(old)).replace('normalization = "primary"\n', ""))
    assert "normalization" not in (tmp_path / "config.toml").read_text()
    assert read_config(tmp_path).model.normalization == "primary"


def test_compile_dynamic_takes_auto_true_or_false_and_names_the_key_otherwise():
    for value in ("auto", "true", "false"):
        assert load_config(overrides=[f"runtime.compile_dynamic={value}"]).runtime.compile_dynamic == value
    with pytest.raises(ConfigError, match=r"runtime\.compile_dynamic = 'maybe': expected one of auto, true, false"):
        load_config(overrides=["runtime.compile_dynamic=maybe"])
    with pytest.raises(ConfigError, match=r"runtime\.compile_dynamic = False: expected a str"):
        TrainConfig.from_dict({"runtime": {"compile_dynamic": False}})  # TOML: write "false", quoted
