"""No user file is ever unpickled with the full pickle machinery: the dataset releases are read
by a restricted unpickler (loaders/sources/safe_pickle.py), and a crafted file that would run a
command is refused with a message naming it, before anything runs or is written."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from loaders.sources.base import SourceError
from loaders.sources.safe_pickle import safe_loads
from tests.fixtures_formats import write_cifar10, write_imagenet

REPO = Path(__file__).resolve().parents[1]


class _WritesAMarker:
    """What an attacker ships: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _prepare(fmt: str, source: Path, out: Path):
    return CliRunner().invoke(app, ["prepare", fmt, str(source), str(out), "--split", "train"])


def test_a_crafted_cifar_meta_file_is_refused_and_runs_nothing(tmp_path):
    folder, _ = write_cifar10(tmp_path / "src", archive=False)
    marker = tmp_path / "owned"
    meta = folder / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": _WritesAMarker(marker)}, protocol=2))
    result = _prepare("cifar10", folder.parent, tmp_path / "out.beton")
    assert result.exit_code == 1, result.output
    assert not marker.exists()
    assert "batches.meta" in result.output and "refused" in result.output
    assert not (tmp_path / "out.beton").exists()


def test_a_crafted_imagenet_batch_is_refused_and_runs_nothing(tmp_path):
    root, _ = write_imagenet(tmp_path / "imnet", batches=1, n=4)
    marker = tmp_path / "owned"
    (root / "train_data_batch_1").write_bytes(pickle.dumps({"data": _WritesAMarker(marker), "labels": [1]}))
    result = _prepare("imagenet32", root, tmp_path / "out.beton")
    assert result.exit_code == 1, result.output
    assert not marker.exists()
    assert "train_data_batch_1" in result.output and "refused" in result.output
    assert not (tmp_path / "out.beton").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_what_the_releases_contain_loads_at_every_protocol(protocol):
    data = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], "mean": np.float64(0.5),
            "names": [b"airplane", "cat"], "shape": (2, 6), "nested": {"x": np.zeros(3, np.float32)}}
    back = safe_loads(pickle.dumps(data, protocol=protocol), "batch")
    assert np.array_equal(back[b"data"], data[b"data"]) and back[b"data"].dtype == np.uint8
    assert back["labels"] == [1, 2] and back["mean"] == 0.5 and back["names"] == [b"airplane", "cat"]
    assert back["shape"] == (2, 6) and back["nested"]["x"].dtype == np.float32


@pytest.mark.parametrize("payload", [
    {"f": print}, {"f": Path("x")}, {"f": np.load},
    {"f": np.ma.masked_array([1, 2])},  # a numpy type outside the releases' own
])
def test_any_other_global_is_refused_naming_the_file(payload):
    with pytest.raises(SourceError, match=r"^data_batch_1: refused to unpickle: it references "):
        safe_loads(pickle.dumps(payload, protocol=2), "data_batch_1")


def test_a_truncated_file_is_not_called_malicious():
    blob = pickle.dumps({"data": np.zeros(100, np.uint8)}, protocol=2)
    with pytest.raises(Exception) as err:
        safe_loads(blob[: len(blob) // 2], "test_batch")
    assert not isinstance(err.value, SourceError)  # the caller names it "truncated"


def test_no_module_reads_user_files_with_pickle_or_unsafe_loaders():
    """A regression guard: the restricted unpickler is the only unpickling; torch.load always
    passes weights_only=True and np.load never allows pickles."""
    offenders = []
    for folder in ("engine", "loaders", "kernels", "cli", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "safe_pickle.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                where = f"{path.relative_to(REPO)}:{number}"
                if re.search(r"\bpickle\.(loads?|Unpickler)\b|\bcloudpickle\b|\bdill\b|\bjoblib\.load\b", code):
                    offenders.append(where)
                if "torch.load(" in code and "weights_only=True" not in code:
                    offenders.append(where)
                if re.search(r"\bnp\.load\(", code) and "allow_pickle=False" not in code:
                    offenders.append(where)
    assert offenders == []
