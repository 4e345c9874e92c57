"""method.aux_mode = oracle: related auxiliary classes routed high and unrelated ones low by the
groups the shapes generator records, after the same warm-up as biamat; refused for other data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.config import ConfigError
from engine.methods.oracle import oracle_high
from engine.trainer import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_oracle_high_reads_each_datasets_own_classes():
    related = [torch.tensor([True, False, True]), torch.tensor([False, True])]
    y_aux = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    high = oracle_high(related, y_aux, [4, 3])
    assert high.tolist() == [True, False, True, True, True, False, True]


def test_a_run_routes_related_classes_high_and_unrelated_ones_low(tiny_train_config, tmp_path):
    records = train(tiny_train_config("method.aux_mode=oracle"), tmp_path)  # 1 warm-up epoch of 3
    assert [r["warmup"] for r in records] == [True, False, False]
    assert all(r["omega"] is None for r in records)  # no confidence test, so no threshold
    rows = [json.loads(line) for line in (tmp_path / "selection.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [2, 3]
    for row in rows:
        related = np.array(row["related"])
        seen, high = np.array(row["seen"]), np.array(row["high"])
        assert related.any() and (~related).any() and seen[related].sum() and seen[~related].sum()
        assert np.array_equal(high[related], seen[related]) and not high[~related].any()
        assert records[row["epoch"] - 1]["n_high_ratio"] == pytest.approx(high.sum() / seen.sum())


def test_data_without_recorded_groups_is_refused_by_name(tiny_train_config, tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "other.npz"
    np.savez(npz, images=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8), labels=np.arange(64) % 5)
    with pytest.raises(ConfigError, match=r"aux_mode = \"oracle\".*'other'.*records none"):
        train(tiny_train_config("method.aux_mode=oracle", f"data.aux={npz}"), tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()
