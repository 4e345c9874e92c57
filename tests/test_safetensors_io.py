"""The built-in safetensors reader/writer agrees with the `safetensors` package both ways."""

from __future__ import annotations

import pytest
import torch

from engine import safetensors_io

safetensors_torch = pytest.importorskip("safetensors.torch")


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=g),
        "bn1.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
        "empty": torch.zeros(0, 4),
    }


def test_own_writer_is_read_by_the_package(tmp_path):
    path = tmp_path / "own.safetensors"
    safetensors_io._save(_tensors(), path, {"format": "pt"})
    loaded = safetensors_torch.load_file(str(path))
    with safetensors_torch.safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    for name, t in _tensors().items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_own_reader_reads_the_package_file(tmp_path):
    path = tmp_path / "package.safetensors"
    safetensors_torch.save_file(_tensors(), str(path))
    loaded = safetensors_io._load(path)
    assert loaded.keys() == _tensors().keys()
    for name, t in _tensors().items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_own_reader_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\xff" * 12)
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_io._load(path)
