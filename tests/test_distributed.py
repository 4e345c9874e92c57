"""torchrun on this machine: two gloo processes started by torch.multiprocessing, as torchrun would
start them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment).

- One DistributedDataParallel step equals one single-process step on the concatenated batch, for
  AT (per-channel and per-image normalisation) and TRADES: weights, one omega on both ranks equal
  to the single-process omega of the global batch (and its EMA update), and selection counts
  that sum to the single-process counts.
  BatchNorm is frozen in eval mode there (a shard's batch statistics are not the global batch's,
  and PyTorch's SyncBatchNorm runs on GPUs only: the sync_bn variant is the `gpu` test).
- A training run on two ranks: identical replicas, disjoint shards, rank 0 alone writes, metrics
  and selection counts over both ranks, an exact resume on two ranks, a resume on one rank.
- Evaluation on two ranks gives one process's report.

Every spawn is a couple of seconds of work on tiny WRN-10-1 models; each costs a few seconds more
to start its processes, so the trainer and evaluation checks share one spawn.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from tests.conftest import make_batch, tiny_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

WORLD = 2
TIMING_FIELDS = {"images_per_s", "seconds", "eval_seconds"}
# Absolute LR milestone, so a 2-epoch run resumed to 3 has the schedule of a 3-epoch run.
RUN = ("optim.milestones=2", "runtime.kernels=torch", "eval.batch_size=8")
EVAL_N = 36  # 5 batches of 8 (the last short): 2 batches on rank 0, 3 on rank 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args) -> None:
    mp.spawn(worker, args=(_free_port(), *args), nprocs=WORLD, join=True)


def _join(rank: int, port: int) -> None:
    """Joins the gloo group the way `biamat-engine train` does under torchrun."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from engine.distributed import init_from_env

    torch.set_num_threads(1)
    assert init_from_env("cpu")


# ---- one step -------------------------------------------------------------------------------

STEP_CASES = {
    # pi near 1 puts omega inside the auxiliary confidences, so both routes are taken.
    "at": dict(name="at", aux_mode="biamat", pi=0.9, alpha=1.0),
    "trades-ema": dict(name="trades", aux_mode="biamat", pi=0.9, alpha=0.5, threshold="ema", ema_momentum=0.5),
    "standard": dict(name="standard", aux_mode="biamat", pi=0.9, alpha=1.0),
    "at-per-image": dict(name="at", aux_mode="biamat", pi=0.9, alpha=1.0),
}
# Per-image standardisation takes each image's own statistics, so a shard's step still equals the
# global batch's; the other cases normalise per channel.
PER_IMAGE_CASES = ("at-per-image",)
GLOBAL_BATCH = dict(n_pri=8, aux_sizes=(8,), aux_classes=(5,), size=8)


class _FrozenBatchNorm(nn.BatchNorm2d):
    """BatchNorm that stays in eval mode whatever `train()` asks: its output then does not depend
    on which other samples share the batch, so a shard's step can equal the global batch's."""

    def train(self, mode: bool = True):
        return super().train(False)


def _step_model(normalization: str = "per-channel") -> nn.Module:
    from engine.models import build

    torch.manual_seed(0)
    model = build("wrn-10-1", 10, GLOBAL_BATCH["aux_classes"], normalization=normalization)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _FrozenBatchNorm  # same parameters and buffers, eval-mode forward
    return model.train()


def _shard(batch, rank: int):
    """Rank `rank`'s half of a global batch (one auxiliary dataset, so halves stay sorted by source)."""
    from loaders.types import Batch

    p, a = len(batch.y_pri) // WORLD, len(batch.y_aux) // WORLD
    ps, as_ = slice(rank * p, (rank + 1) * p), slice(rank * a, (rank + 1) * a)
    return Batch(batch.x_pri[ps], batch.y_pri[ps], batch.x_aux[as_], batch.y_aux[as_], batch.aux_source[as_], (a,))


def _run_steps(case: str, rank: int | None) -> dict:
    """Two steps of `case` from omega = None, on the global batches (rank None: one process,
    no DDP) or on rank `rank`'s halves of them through DistributedDataParallel."""
    from engine.config import AttackConfig, MethodConfig
    from engine.distributed import World, data_parallel
    from engine.methods import METHODS, MethodState, StepContext
    from engine.step import TrainStep

    model = _step_model("per-image" if case in PER_IMAGE_CASES else "per-channel")
    cfg = MethodConfig(**STEP_CASES[case])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fp32 = torch.amp.GradScaler("cpu", enabled=False)
    if rank is None:
        step = TrainStep(model, METHODS[cfg.name], optimizer, fp32, MethodState())
    else:
        step = TrainStep(model, METHODS[cfg.name], optimizer, fp32, MethodState(),
                         data_parallel(model, model.features, torch.device("cpu")), World.current())
    # eps = 0 keeps the attack (which runs, with its input gradients) free of random starts, which
    # a shard draws differently from the global batch.
    ctx = StepContext(method=cfg, attack=AttackConfig(eps=0.0, step_size=0.01, steps=2), in_warmup=False,
                      trunk=model.features, kernel_impl="torch")
    out = {"omega": [], "loss": [], "seen": [], "high": []}
    for seed in (1, 2):
        batch = make_batch(seed=seed, **GLOBAL_BATCH)
        loss, stats = step(batch if rank is None else _shard(batch, rank), ctx)
        out["omega"].append(step.state.omega)
        out["loss"].append(float(loss.detach()))
        out["seen"].append(stats.seen_per_class[0].clone())
        out["high"].append(stats.high_per_class[0].clone())
    out["params"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def _step_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    _join(rank, port)
    try:
        for case in STEP_CASES:
            torch.save(_run_steps(case, rank), f"{out}/{case}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def step_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-steps")
    _spawn(_step_worker, str(out))
    return out


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_a_ddp_step_equals_one_process_on_the_concatenated_batch(step_results, case):
    one = _run_steps(case, None)
    ranks = [torch.load(step_results / f"{case}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, value in one["params"].items():
        for r in ranks:
            torch.testing.assert_close(r["params"][name], value, rtol=1e-5, atol=1e-6, msg=f"{case} {name}")
    # The loss of a rank is its shard's mean: the ranks' mean is the global batch's.
    assert [sum(ls) / WORLD for ls in zip(*(r["loss"] for r in ranks))] == pytest.approx(one["loss"], rel=1e-5)


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_every_rank_holds_the_one_omega_of_the_global_batch(step_results, case):
    one = _run_steps(case, None)
    ranks = [torch.load(step_results / f"{case}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["omega"] == ranks[1]["omega"]  # bit for bit: one all-reduced number
    assert ranks[0]["omega"] == pytest.approx(one["omega"], rel=1e-6)  # set, then (ema) updated
    assert one["omega"][0] != one["omega"][1] or STEP_CASES[case].get("threshold") != "ema"


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_selection_counts_of_the_ranks_sum_to_one_process_counts(step_results, case):
    one = _run_steps(case, None)
    ranks = [torch.load(step_results / f"{case}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key in ("seen", "high"):
        for step, expected in enumerate(one[key]):
            assert torch.equal(ranks[0][key][step] + ranks[1][key][step], expected), (key, step)
    highs = [int(h.sum()) for h in one["high"]]
    assert any(0 < h < GLOBAL_BATCH["aux_sizes"][0] for h in highs), f"both routes should be taken: {highs}"


# ---- a training run and an evaluation ------------------------------------------------------

def _run_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from engine.distributed import World
    from engine.evaluation.runner import evaluate
    from engine.trainer import Trainer
    from loaders.datasets import open_dataset
    from loaders.images import to_device_images

    _join(rank, port)
    try:
        whole = Trainer(tiny_config(*RUN), f"{out}/whole")
        whole.fit()
        torch.save({"state": whole.model.state_dict(), "omega": whole.method_state.omega,
                    "shard": whole.data.stream.primary.batch_indices(0),
                    "aux_shard": whole.data.stream.aux[0].batch_indices(0)}, f"{out}/whole-rank{rank}.pt")
        # Interrupted after epoch 2 (the checkpoint a crash would leave), then resumed to epoch 3.
        Trainer(tiny_config(*RUN, "optim.epochs=2"), f"{out}/resumed").fit()
        resumed = Trainer(tiny_config(*RUN), f"{out}/resumed", resume=True)
        resumed.fit()
        torch.save(resumed.model.state_dict(), f"{out}/resumed-rank{rank}.pt")

        test = open_dataset(f"shapes:primary?n={EVAL_N}&size=16", "test")
        images, labels = to_device_images(test.images, "cpu"), torch.from_numpy(test.labels)
        model = whole.model.eval()
        report = evaluate(model, images, labels, _eval_plan(), world=World.current())
        Path(f"{out}/eval-rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


GATED_RUN = RUN + ("method.omega_when=accuracy", "method.omega_holdout=18", "method.warmup_epochs=0",
                   "method.omega_latest_epoch=1", "method.omega_accuracy=1.0", "model.aux_bn=separate")


def _gated_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from engine.distributed import World
    from engine.omega_gate import heldout_counts

    _join(rank, port)
    try:
        from engine.trainer import Trainer

        trainer = Trainer(tiny_config(*GATED_RUN, "optim.epochs=2"), f"{out}/gated")
        trainer.fit()
        data = trainer.data
        # Batches of 4: 5 batches of the 18 held-out images, split 2 / 3 over the ranks.
        summed = heldout_counts(trainer.classifier, data.omega_x, data.omega_y, World.current(), 4, "torch")
        alone = heldout_counts(trainer.classifier, data.omega_x, data.omega_y, World(), 4, "torch")
        torch.save({"summed": summed, "alone": alone, "method": trainer.method_state.state_dict(),
                    "index": data.omega_index}, f"{out}/gated-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_held_out_check_counts_every_rank_and_every_rank_decides_alike(tmp_path):
    """method.omega_when = accuracy with separate auxiliary BatchNorm on two ranks: both hold out
    the same slice, its counts are summed to the one-process count, the decision is the same."""
    _spawn(_gated_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"gated-rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:
        assert r["summed"] == r["alone"] and r["summed"][1] == 18
    assert (ranks[0]["index"] == ranks[1]["index"]).all()
    assert ranks[0]["method"] == ranks[1]["method"] and ranks[0]["method"]["warmup_ended"] == 1
    records = _records(tmp_path / "gated" / "metrics.jsonl")
    assert records[0]["omega_heldout_n"] == 18 and records[1]["omega"] == ranks[0]["method"]["omega"]


def _eval_plan():
    from engine.evaluation.runner import EvalPlan

    return EvalPlan(attacks=("clean", "pgd3", "cw3", "aa"), aa_attacks=("apgd-ce",), aa_iterations=2,
                    eps=4 / 255, step_size=2 / 255, batch_size=8, seed=0, restarts=2)  # some points survive


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-run")
    _spawn(_run_worker, str(out))
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ranks_train_one_model_on_disjoint_shards_with_one_omega(two_rank_run):
    r0, r1 = (torch.load(two_rank_run / f"whole-rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in r0["state"]:  # parameters by DDP, BatchNorm buffers by the epoch's broadcast
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    for key in ("shard", "aux_shard"):
        assert not set(r0[key].tolist()) & set(r1[key].tolist()), key
    assert r0["omega"] is not None and r0["omega"] == r1["omega"]
    state = torch.load(two_rank_run / "whole" / "last.pt", weights_only=True)
    assert state["method"]["omega"] == r0["omega"] and state["world_size"] == WORLD
    assert len(state["rng_ranks"]) == WORLD


def test_rank_zero_alone_writes_metrics_counted_over_all_ranks(two_rank_run):
    cfg = tiny_config(*RUN)
    records = _records(two_rank_run / "whole" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]  # one line per epoch: one writer
    per_step = cfg.data.batch_size + cfg.data.aux_batch_size  # per rank
    steps = 64 // (WORLD * cfg.data.batch_size)  # 64 primary images over 2 ranks
    assert all(r["images"] == WORLD * steps * per_step and r["step"] == steps * r["epoch"] for r in records)
    selection = _records(two_rank_run / "whole" / "selection.jsonl")
    assert [s["epoch"] for s in selection] == [2, 3]  # routed after the warm-up epoch
    for s in selection:  # both ranks' auxiliary samples, counted once each
        assert sum(s["seen"]) == WORLD * steps * cfg.data.aux_batch_size
        assert 0 <= sum(s["high"]) <= sum(s["seen"])
    assert not list((two_rank_run / "whole").glob("*rank*")) and not list((two_rank_run / "whole").glob(".*.tmp"))


def test_a_run_resumed_on_as_many_ranks_ends_as_the_uninterrupted_one(two_rank_run):
    whole = torch.load(two_rank_run / "whole-rank0.pt", weights_only=True)["state"]
    for rank in range(WORLD):
        resumed = torch.load(two_rank_run / f"resumed-rank{rank}.pt", weights_only=True)
        for name, value in whole.items():
            assert torch.equal(resumed[name], value), (rank, name)

    def strip(records):
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]

    assert strip(_records(two_rank_run / "resumed" / "metrics.jsonl")) == strip(
        _records(two_rank_run / "whole" / "metrics.jsonl"))
    assert (two_rank_run / "resumed" / "selection.jsonl").read_text() == (
        two_rank_run / "whole" / "selection.jsonl").read_text()


def test_a_two_rank_run_resumes_on_one_process_at_its_epoch_with_its_omega_and_optimiser(two_rank_run, tmp_path):
    import shutil

    from engine.checkpoint import load_checkpoint
    from engine.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(two_rank_run / "whole", run)
    saved = load_checkpoint(run / "last.pt")
    trainer = Trainer(tiny_config(*RUN, "optim.epochs=4"), run, resume=True)
    assert (trainer.epoch, trainer.step) == (saved["epoch"], saved["step"]) == (3, 3)
    assert trainer.method_state.omega == saved["method"]["omega"]
    momentum = trainer.optimizer.state_dict()["state"]
    for i, s in saved["optimizer"]["state"].items():
        assert torch.equal(momentum[i]["momentum_buffer"], s["momentum_buffer"]), i
    # The auxiliary stream continues at the same point of its epoch: p batches on each of 2
    # ranks are 2p batches of the same size on one.
    for aux, old in zip(trainer.data.stream.aux, saved["stream"]["aux"]):
        assert aux.state_dict() == {"epoch": old["epoch"], "position": min(WORLD * old["position"], len(aux))}
    records = trainer.fit()
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["omega"] == saved["method"]["omega"]  # frozen after the warm-up
    assert records[-1]["images"] == 2 * (32 + 32)  # 64 primary images in batches of 32, one rank


def test_evaluation_on_two_ranks_equals_one_process(two_rank_run):
    from engine.evaluation.runner import evaluate
    from engine.models import build
    from loaders.datasets import open_dataset
    from loaders.images import to_device_images

    reports = [json.loads((two_rank_run / f"eval-rank{r}.json").read_text()) for r in range(WORLD)]
    state = torch.load(two_rank_run / "whole-rank0.pt", weights_only=True)["state"]
    model = build("wrn-10-1", 10, (len(state["aux_fc.0.bias"]),))
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last).eval()
    test = open_dataset(f"shapes:primary?n={EVAL_N}&size=16", "test")
    one = evaluate(model, to_device_images(test.images, "cpu"), torch.from_numpy(test.labels), _eval_plan())

    def accuracies(report):
        return {"n": report["n"], "clean": report["clean_correct"],
                **{name: a["robust"] for name, a in report["attacks"].items() if name != "aa"}}

    assert reports[0]["world_size"] == WORLD and one["world_size"] == 1
    assert accuracies(reports[0]) == accuracies(reports[1]) == accuracies(one)
    assert one["n"] == EVAL_N and 0 < one["attacks"]["pgd3"]["robust"] < one["clean_correct"]
    # AutoAttack runs on each rank's own slice: its counts are summed over the ranks.
    aa = reports[0]["attacks"]["aa"]
    assert aa == reports[1]["attacks"]["aa"]
    assert aa["robust"] == aa["robust_after"]["apgd-ce"] <= reports[0]["clean_correct"]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_sync_bn_ddp_step_equals_one_process_on_two_gpus(tmp_path):
    """With runtime.sync_bn BatchNorm trains on the global batch's statistics, so a DDP step on
    two GPUs equals one process's step on the concatenated batch without freezing BatchNorm."""
    _spawn(_sync_bn_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"sync-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    one = _sync_bn_steps(None, torch.device("cuda:0"))
    for name, value in one.items():
        for r in ranks:
            torch.testing.assert_close(r[name].cuda(0), value, rtol=1e-4, atol=1e-5, msg=name)


def _sync_bn_steps(rank: int | None, device: torch.device) -> dict:
    from engine.config import AttackConfig, MethodConfig
    from engine.distributed import World, data_parallel, sync_batchnorm
    from engine.methods import METHODS, MethodState, StepContext
    from engine.models import build
    from engine.step import TrainStep

    torch.manual_seed(0)
    torch.backends.cudnn.deterministic = True
    model = build("wrn-10-1", 10, GLOBAL_BATCH["aux_classes"])
    if rank is not None:
        model = sync_batchnorm(model)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fp32 = torch.amp.GradScaler("cuda", enabled=False)
    cfg = MethodConfig(**STEP_CASES["at"])
    ddp = None if rank is None else data_parallel(model, model.features, device)
    step = TrainStep(model, METHODS["at"], optimizer, fp32, MethodState(), ddp,
                     World() if rank is None else World.current())
    ctx = StepContext(method=cfg, attack=AttackConfig(eps=0.0, step_size=0.01, steps=2), in_warmup=False,
                      trunk=model.features, kernel_impl="torch")
    for seed in (1, 2):
        batch = make_batch(seed=seed, device=str(device), **GLOBAL_BATCH)
        step(batch if rank is None else _shard(batch, rank), ctx)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sync_bn_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from engine.distributed import init_from_env

    assert init_from_env("cuda")
    try:
        torch.save(_sync_bn_steps(rank, torch.device(f"cuda:{rank}")), f"{out}/sync-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_torchrun_standalone_trains_and_evaluates_through_the_cli(tmp_path):
    """The README's recipe on one machine: `torchrun --standalone --nproc-per-node 2` around the
    CLI; rank 0 alone writes the run directory and the evaluation report."""
    import subprocess
    import sys

    from tests.conftest import TINY_OVERRIDES

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    entry = tmp_path / "biamat_engine.py"  # what the console script runs (`-m cli.app` would
    entry.write_text("from cli.app import main\nmain()\n")  # register the commands on another app)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
              str(entry)]
    sets = [a for o in (*TINY_OVERRIDES, *RUN, "optim.epochs=2") for a in ("--set", o)]
    run = tmp_path / "run"
    done = subprocess.run([*launch, "train", *sets, "--out", str(run)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["omega"] is not None
    assert all(r["images"] == WORLD * (32 + 32) for r in records)  # one step of 32 + 32 per rank
    done = subprocess.run([*launch, "eval", str(run), "--test", f"shapes:primary?n={EVAL_N}&size=16",
                           "--attacks", "clean,pgd2", "--batch-size", "8", "--device", "cpu"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "eval.json").read_text())
    assert report["world_size"] == WORLD and report["n"] == EVAL_N
    assert done.stdout.count("Linf eps") == 1 and done.stdout.count("wrote") == 1  # rank 0 alone printed
