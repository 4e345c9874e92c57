"""Two processes on gloo, as torchrun would start them: sharded data, averaged gradients,
rank 0 alone writes the run directory."""

from __future__ import annotations

import json
import socket

import torch
import torch.multiprocessing as mp

from tests.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from engine.distributed import init_from_env
    from engine.trainer import Trainer

    torch.set_num_threads(1)
    assert init_from_env("cpu")
    try:
        trainer = Trainer(tiny_config("optim.epochs=2"), out)
        trainer.fit()
        params = {k: v for k, v in trainer.model.named_parameters()}
        torch.save({k: v.detach() for k, v in params.items()}, f"{out}/params-rank{rank}.pt")
        torch.save(trainer.data.stream.primary.batch_indices(0), f"{out}/shard-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_one_model_on_disjoint_shards(tmp_path):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)

    p0 = torch.load(out / "params-rank0.pt", weights_only=True)
    p1 = torch.load(out / "params-rank1.pt", weights_only=True)
    # Averaged gradients keep the replicas identical; a rank that skipped the all-reduce would drift.
    assert p0.keys() == p1.keys()
    for name in p0:
        assert torch.equal(p0[name], p1[name]), name
    s0 = torch.load(out / "shard-rank0.pt", weights_only=True).flatten()
    s1 = torch.load(out / "shard-rank1.pt", weights_only=True).flatten()
    assert not set(s0.tolist()) & set(s1.tolist())
    # One writer: a single metrics line per epoch, counting both ranks' images.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert (out / "last.pt").is_file() and (out / "model.safetensors").is_file()
