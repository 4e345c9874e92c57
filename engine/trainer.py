"""The training loop: owns optimiser, schedule, AMP, compile, evaluation cadence, checkpoints
and logs, and knows nothing about which method runs (it hands `METHODS[name]` to the
`engine.step.TrainStep` that every batch goes through).

    load or start -> while epoch < epochs: train one epoch; evaluate; log; save

Resuming from `last.pt` restores model, optimiser, scaler, step, method state, stream
positions and RNG states, so a resumed run ends with the same metrics as one that never stopped.

Under torchrun every rank runs this loop on its own shard of the data: DistributedDataParallel
averages the gradients (`engine.step.TrainStep`), omega comes from all ranks' batches, the epoch's
metrics and selection counts are summed over the ranks, the per-epoch evaluation splits the
held-out set over them, and rank 0 alone writes the run directory. A checkpoint holds every
rank's RNG state and the number of ranks: it resumes exactly on as many ranks, and on another
number of ranks from the same epoch with the same omega and optimiser state (only the random
streams and the shards then differ from an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from engine.checkpoint import clean_state_dict, export_model, load_checkpoint, save_checkpoint
from engine.config import ConfigError, TrainConfig, split_produced, to_toml
from engine.data import RunData, build_run_data
from engine.data_fingerprint import check_fingerprint, record_fingerprint
from engine.distributed import World, data_parallel, rank_device, rank_seed, sync_batchnorm
from engine.evaluation import accuracy
from engine.init_from import start_from_source
from engine.methods import METHODS, MethodState, StepContext, StepStats
from engine.methods.oracle import related_masks
from engine.models import build, card_normalization, model_card, primary_state_dict
from engine.omega_gate import OmegaGate, heldout_counts
from engine.outputs import FolderLock
from engine.run_dir import JsonLines, RunDir, atomic_write_text, refuse_to_replace
from engine.runtime import Runtime, apply_backend_flags, resolve_runtime, rng_state, seed_everything, set_rng_state
from engine.run_config import continue_run, resolve_config
from engine.run_record import RunRecord, checkpoint_record, write_run_record
from engine.schedule import build_optimizer, learning_rate, schedule_offset
from engine.step import TrainStep, compile_trunk
from engine.tensorboard_log import clear_event_files, open_tensorboard, require_tensorboard

log = logging.getLogger(__name__)

StepHook = Callable[[int, int, int, float], None]
"""on_step(epoch, batch_in_epoch, batches_per_epoch, images_per_s), for progress bars."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


class _Classifier(nn.Module):
    """h_pri through the (possibly compiled) trunk under the run's autocast, for evaluation."""

    def __init__(self, model: nn.Module, trunk: Callable, autocast: Callable) -> None:
        super().__init__()
        self.model = model
        self._trunk, self._autocast = trunk, autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.heads(self._trunk(x))[0].float()


class _EpochTotals:
    """Sums step statistics on the device; read once per epoch."""

    KEYS = ("loss", "loss_pri", "loss_low", "loss_high")

    def __init__(self) -> None:
        self.steps = 0
        self.images = 0
        self.sums: dict[str, torch.Tensor | float] = {}
        self.routed_aux = 0
        self.n_high: torch.Tensor | int = 0
        self.seen: list[torch.Tensor] = []
        self.high: list[torch.Tensor] = []

    def add(self, s: StepStats, images: int) -> None:
        self.steps += 1
        self.images += images
        for key in self.KEYS:
            self.sums[key] = self.sums.get(key, 0.0) + getattr(s, key)
        if s.routed:
            self.routed_aux += s.n_aux
            self.n_high = self.n_high + s.n_high
            if not self.seen:
                self.seen = [c.clone() for c in s.seen_per_class]
                self.high = [c.clone() for c in s.high_per_class]
            else:
                for acc, c in zip(self.seen, s.seen_per_class):
                    acc += c
                for acc, c in zip(self.high, s.high_per_class):
                    acc += c

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.steps, 1) for k, v in self.sums.items()}

    def all_reduce(self, world: World, device: torch.device) -> None:
        """Sums every rank's totals in one collective, so the epoch's record and selection.jsonl
        count the global batch: loss sums and steps (means over all ranks' steps), images, high
        samples, and the per-class seen and high counts. Every rank routes on the same steps, so
        the per-class lists have the same shapes everywhere."""
        if world.size == 1:
            return
        scalars = [self.sums.get(k, 0.0) for k in self.KEYS] + [self.n_high, self.routed_aux, self.steps, self.images]
        counts = self.seen + self.high
        flat = torch.cat([torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in scalars])]
                         + [c.to(device=device, dtype=torch.float64) for c in counts])
        flat = world.sum(flat).cpu()
        for i, key in enumerate(self.KEYS):
            self.sums[key] = float(flat[i])
        k = len(self.KEYS)
        self.n_high, self.routed_aux, self.steps, self.images = (int(v) for v in flat[k:k + 4].round().tolist())
        pieces = flat[k + 4:].round().long().split([len(c) for c in counts])
        self.seen, self.high = list(pieces[:len(self.seen)]), list(pieces[len(self.seen):])


class _NonFiniteWatch:
    """Collects `not isfinite(loss)` on the device and reads it only every `every` steps: a
    read is a device sync, which on a GPU would stall the queue after every step."""

    def __init__(self, device: torch.device, world: World = World()) -> None:
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        self.every = 1 if device.type == "cpu" else 25
        self.world = world

    def add(self, loss: torch.Tensor) -> None:
        self.flag |= ~torch.isfinite(loss)

    def due(self, steps_done: int) -> bool:
        return steps_done % self.every == 0 and self.seen()

    def seen(self) -> bool:
        # Decided over all ranks, at the same steps on every one: a rank stopping alone would
        # leave the others waiting in the next all-reduce.
        return self.world.any(self.flag)


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 on_step: StepHook | None = None) -> None:
        self.files = RunDir(out_dir)
        self.out = self.files.root
        self.world = World.current()
        self.rank, self.world_size, self.is_main = self.world.rank, self.world.size, self.world.is_main
        # One process writes a run directory (rank 0 under torchrun: the only rank that writes);
        # taken before anything is checked or cleared, so a second train, resume or study on
        # this folder stops at once, naming the holder.
        self._made_folder = not self.out.exists()
        self._started = False  # True once this process has cleared or written a run file here
        self.lock = FolderLock(self.out, "run directory").acquire() if self.is_main else None
        try:
            self._set_up(cfg, resume, overwrite, on_step)
        except BaseException:
            self._abandon()
            raise

    def _set_up(self, cfg: TrainConfig, resume: bool, overwrite: bool, on_step: StepHook | None) -> None:
        if not resume and not overwrite:
            if self.files.holds_run():
                raise FileExistsError(
                    f"{self.out} already holds a run ({self.files.last.name}): continue it with --resume, "
                    "pick another --out, or pass --overwrite to replace it"
                )
            # Results without a last.pt (a copied best model, an eval report) are not ours to delete.
            refuse_to_replace(self.out, "pick another --out, or pass --overwrite to replace the run files in it")
        self.on_step = on_step if self.is_main else None
        self.cfg, self.rt = self._resolve(cfg)
        apply_backend_flags(self.rt)
        if self.cfg.runtime.tensorboard and self.is_main:
            require_tensorboard()  # a missing package fails before the data is built
        seed_everything(cfg.runtime.seed)
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.data: RunData = build_run_data(
            self.cfg.data, use_aux=cfg.uses_aux, device=self.rt.device, seed=cfg.runtime.seed,
            eval_n=cfg.eval.n, kernel_impl=self.rt.kernels, rank=self.rank, world_size=self.world_size,
            normalization=cfg.model.normalization, pseudo_labelled=cfg.pseudo_labelled,
            omega_holdout=self.cfg.method.omega_holdout if self.cfg.method.omega_when == "accuracy" else 0,
        )
        self.gate = OmegaGate(self.cfg.method)
        self.aux_related = (related_masks(self.data.aux_names, self.data.aux_related, self.rt.device)
                            if self.cfg.selects and self.cfg.method.aux_mode == "oracle" else ())
        self.normalization_source = self.data.normalization.source
        self.model = self._build_model()
        self.record = RunRecord()  # a resume reads the run's own in _resume
        if cfg.init.source and not resume:  # a resumed fine-tune continues its own checkpoint, not the source
            init, self.normalization_source = start_from_source(self.model, self.cfg)
            self.record = RunRecord(init=init)
        self.trunk = compile_trunk(self.model, self.rt)
        self.classifier = _Classifier(self.model, self.trunk, self.rt.autocast())
        # DDP's constructor broadcasts rank 0's weights, so the ranks start from one model.
        train_forward = data_parallel(self.model, self.trunk, self.rt.device) if self.world.size > 1 else None
        self.train_step = TrainStep(self.model, METHODS[cfg.method.name], build_optimizer(self.model, self.cfg.optim),
                                    self.rt.grad_scaler(), MethodState(), train_forward, self.world)
        if self.rank > 0:  # rank 0 draws what one process would; the others their own attack starts
            seed_everything(rank_seed(cfg.runtime.seed, self.rank))
        self.epoch = 0
        self.step = 0
        self.best_robust = -1.0
        self.metrics = JsonLines(self.files.metrics, self.is_main)
        self.selection = JsonLines(self.files.selection, self.is_main)
        if resume:
            check_fingerprint(self.files, self.cfg)  # before anything of the checkpoint is loaded
            self._resume()
        elif self.is_main:
            self._started = True
            self._clear_run_dir()
            record_fingerprint(self.files, self.cfg)
            write_run_record(self.files, self.record)
        # A finished run resumed without more epochs trains nothing: its config.toml stays the
        # one its checkpoint was written under.
        if self.is_main and (not resume or self.epoch < self.cfg.optim.epochs):
            atomic_write_text(self.files.config, to_toml(self.cfg))
        self.tensorboard = open_tensorboard(self.files.tensorboard, self.epoch + 1, self.cfg.runtime.tensorboard
                                            and self.is_main and self.epoch < self.cfg.optim.epochs)

    # ---- set-up ---------------------------------------------------------------------------
    def _resolve(self, cfg: TrainConfig) -> tuple[TrainConfig, Runtime]:
        """Device, precision, compile and kernels fixed once, and the warm-up zeroed where no
        selection runs; the resolved tree is what the run records."""
        if self.world_size > 1:
            cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, device=rank_device(cfg.runtime.device)))
        resolved_cfg = resolve_config(cfg)
        if resolved_cfg.method.warmup_epochs != cfg.method.warmup_epochs:
            log.info("method.warmup_epochs = %d applies to the biamat selection only, which this run "
                     "does not use (aux_mode %s, %d auxiliary datasets): recorded as 0",
                     cfg.method.warmup_epochs, cfg.method.aux_mode, len(cfg.data.aux))
        runtime, resolved = resolve_runtime(resolved_cfg.runtime, drop_last=resolved_cfg.data.drop_last)
        return dataclasses.replace(resolved_cfg, runtime=resolved), runtime

    def _build_model(self) -> nn.Module:
        norm = self.data.normalization
        model = build(self.cfg.model.name, self.data.num_classes, self.data.aux_classes, dropout=self.cfg.model.dropout,
                      mean=norm.mean, std=norm.std, normalization=norm.kind, aux_bn=self.cfg.model.aux_bn)
        if self.cfg.runtime.sync_bn and self.world.size > 1:
            if self.rt.device.type != "cuda":
                raise ConfigError(
                    f"runtime.sync_bn = true on {self.rt.device.type}: PyTorch's SyncBatchNorm runs on GPUs "
                    "only; drop runtime.sync_bn for CPU runs"
                )
            model = sync_batchnorm(model)
        elif self.cfg.runtime.sync_bn:
            log.info("runtime.sync_bn has nothing to sync in one process; BatchNorm stays as it is")
        model.to(self.rt.device)
        if self.rt.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _abandon(self) -> None:
        """After a failure: a run stopped before its first checkpoint leaves nothing that would
        make the same command refuse to start again (its config.toml, logs, or the folder it
        made); then the lock goes."""
        if self.lock is None:
            return
        if self._started and not self.files.holds_run():
            for path in [self.files.config, *self.files.run_files()]:
                path.unlink(missing_ok=True)
            clear_event_files(self.files.tensorboard)
            with contextlib.suppress(OSError):
                self.files.tensorboard.rmdir()  # only when empty
        no_run = not self.files.holds_run()
        self.lock.release(discard=no_run)
        self.lock = None
        if no_run and self._made_folder and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def release(self) -> None:
        """Lets another process write the run directory (fit() does it when it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _clear_run_dir(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        # A replaced run leaves nothing of its own behind to be mistaken for this one's.
        for path in self.files.run_files():
            path.unlink(missing_ok=True)
        clear_event_files(self.files.tensorboard)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.train_step.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.train_step.scaler

    @property
    def method_state(self) -> MethodState:
        return self.train_step.state

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        total = self.cfg.optim.epochs
        try:
            while self.epoch < total:
                record = self._train_epoch()
                self.epoch += 1
                record.update(self.gate.after_epoch(self.epoch, self.method_state, self._omega_heldout_counts))
                if self.epoch % self.cfg.eval.every == 0 or self.epoch == total:
                    record.update(self._evaluate())
                self._log_and_save(record)
        except BaseException:
            if self.tensorboard is not None:
                self.tensorboard.close()
            self._abandon()
            raise
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.world.barrier()  # rank 0's last line is written before any rank reads the file
        self.release()
        return self.metrics.read()

    def _context(self) -> StepContext:
        return StepContext(
            method=self.cfg.method, attack=self.cfg.attack,
            in_warmup=self.gate.in_warmup(self.epoch, self.method_state),
            trunk=self.trunk, autocast=self.rt.autocast(), kernel_impl=self.rt.kernels,
            aux_related=self.aux_related,
        )

    def _omega_heldout_counts(self) -> tuple[int, int]:
        return heldout_counts(self.classifier, self.data.omega_x, self.data.omega_y, self.world,
                              self.cfg.eval.batch_size, self.rt.kernels)

    def _set_learning_rate(self, steps_per_epoch: int) -> float:
        lr = learning_rate(self.cfg.optim, self.step, steps_per_epoch,
                           schedule_offset(self.cfg, self.record.source_epoch))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_epoch(self) -> dict:
        ctx = self._context()
        totals = _EpochTotals()
        steps_per_epoch = len(self.data.stream)
        watch = _NonFiniteWatch(self.rt.device, self.world)
        start = time.perf_counter()
        for i, batch in enumerate(self.data.stream):
            self.step += 1
            lr = self._set_learning_rate(steps_per_epoch)
            loss, stats = self.train_step(batch, ctx)
            # Checked after the optimiser step it belongs to: that step is lost with the run, as
            # nothing is saved before the epoch ends, and last.pt still holds the last good state.
            watch.add(loss)
            if watch.due(i + 1):
                self._fail_nonfinite(i + 1)
            totals.add(stats, len(batch.y_pri) + len(batch.y_aux))
            if self.on_step is not None:  # rank 0's rate times the ranks: the bar reads global images/s
                self.on_step(self.epoch, i + 1, steps_per_epoch,
                             totals.images * self.world.size / (time.perf_counter() - start))
        if watch.seen():
            self._fail_nonfinite(steps_per_epoch)
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize(self.rt.device)
        seconds = time.perf_counter() - start
        if self.world.size > 1:  # the epoch lasts as long as its slowest rank
            seconds = float(self.world.max(torch.tensor(seconds, device=self.rt.device)))
        totals.all_reduce(self.world, self.rt.device)
        # Every rank continues with (and evaluates) the model rank 0 checkpoints.
        self.world.broadcast_buffers(self.model)
        self._check_finite_state()  # after the broadcast: every rank decides on the same tensors
        self._log_selection(totals)
        return self._epoch_record(totals, ctx, lr, seconds)

    def _epoch_record(self, totals: _EpochTotals, ctx: StepContext, lr: float, seconds: float) -> dict:
        means = totals.means()
        return {
            "epoch": self.epoch + 1,
            "step": self.step,
            "lr": lr,
            **{k: means.get(k, 0.0) for k in ("loss", "loss_pri", "loss_low", "loss_high")},
            "omega": self.method_state.omega,
            "n_high_ratio": (float(totals.n_high) / totals.routed_aux) if totals.routed_aux else None,
            "warmup": ctx.in_warmup,
            "images": totals.images,
            "images_per_s": totals.images / seconds,
            "seconds": seconds,
        }

    def _fail_nonfinite(self, batch_index: int, what: str = "the training loss") -> None:
        where = f"in epoch {self.epoch + 1} (by batch {batch_index}, step {self.step})"
        fix = "Lower optim.lr, check the data for corrupt images, or use runtime.precision=fp32"
        if self.files.holds_run():
            kept = (f"the run stopped without saving, so {self.files.last} still holds the last good "
                    f"state. {fix}, then resume with --resume.")
        else:
            kept = (f"the run stopped before its first checkpoint, so there is nothing to resume (and nothing of it "
                    f"is left in {self.out}). {fix}, and start again.")
        raise NonFiniteLossError(f"{what} became NaN or inf {where}; {kept}")

    def _check_finite_state(self) -> None:
        """A checkpoint never holds NaN or inf: weights and BatchNorm statistics can diverge while
        the loss still reads finite (an inf running variance), and such a state would break the
        resume the error suggests. One device sync per epoch."""
        tensors = {k: t for k, t in self.model.state_dict().items() if t.is_floating_point()}
        finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).tolist()
        if not all(finite):
            bad = [k for k, ok in zip(tensors, finite) if not ok]
            self._fail_nonfinite(len(self.data.stream), f"the model's {', '.join(bad[:3])}"
                                 + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""))

    def _evaluate(self) -> dict:
        start = time.perf_counter()
        # Each rank evaluates its own whole batches of the held-out set; the counts are summed.
        part = self.world.batch_shard(len(self.data.heldout_y), self.cfg.eval.batch_size)
        x, y = self.data.heldout_x[part], self.data.heldout_y[part]
        common = dict(eps=self.cfg.attack.eps, step_size=self.cfg.eval.step_size,
                      batch_size=self.cfg.eval.batch_size, kernel_impl=self.rt.kernels)
        clean, n = accuracy(self.classifier, x, y, "clean", **common)
        robust = clean
        if self.cfg.eval.steps > 0:
            robust, _ = accuracy(self.classifier, x, y, f"pgd{self.cfg.eval.steps}", **common)
        if self.world.size > 1:
            clean, robust, n = self.world.sum(torch.tensor([clean, robust, n], device=self.rt.device)).tolist()
        return {"clean_acc": clean / n, "robust_acc": robust / n, "eval_seconds": time.perf_counter() - start}

    def _log_selection(self, totals: _EpochTotals) -> None:
        for i, (seen, high) in enumerate(zip(totals.seen, totals.high)):
            self.selection.write({
                "epoch": self.epoch + 1,
                "aux": i,
                "aux_name": self.data.aux_names[i],
                "class_names": self.data.aux_class_names[i],
                "related": self.data.aux_related[i],
                "seen": seen.tolist(),
                "high": high.tolist(),
            })

    # ---- files ----------------------------------------------------------------------------
    def _card(self) -> dict:
        return model_card(
            self.model, self.cfg.model.name, self.data.class_names,
            aux_classes=list(self.data.aux_classes), threat_model="Linf", eps=self.cfg.attack.eps,
            method=self.cfg.method.name, aux_mode=self.cfg.method.aux_mode if self.cfg.uses_aux else "none",
            aux_data=self.data.aux_names, image_size=int(self.data.heldout_x.shape[-1]),
            eval_step_size=self.cfg.eval.step_size, normalization_source=self.normalization_source,
        )

    def _state(self, rng_ranks: list[dict]) -> dict:
        return {
            "model": clean_state_dict(self.model.state_dict()),
            "model_card": self._card(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method_state.state_dict(),
            "stream": self.data.stream.state_dict(),
            "rng_ranks": rng_ranks,
            "world_size": self.world.size,
            "epoch": self.epoch,
            "step": self.step,
            "best_robust": self.best_robust,
            "config": self.cfg.to_dict(),
            "run_record": self.record.to_dict(),
        }

    def _log_and_save(self, record: dict) -> None:
        robust = record.get("robust_acc")
        improved = robust is not None and robust > self.best_robust
        if improved:
            self.best_robust = robust
        rng_ranks = self.world.gather_objects(rng_state())  # a collective: every rank takes part
        if not self.is_main:
            return
        self.metrics.write(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)
        state = self._state(rng_ranks)
        # last.pt goes last: a resume starts from it, so an interruption between these writes
        # repeats this epoch (exactly) and writes its best.pt and model.safetensors again, rather
        # than resuming past an epoch whose best model was never written whole.
        if improved:
            save_checkpoint(self.files.best, state)
            export_model(self.out, primary_state_dict(self.model), {**state["model_card"], "epoch": self.epoch,
                                                                     "robust_acc": robust})
        save_checkpoint(self.files.last, state)
        log.info("epoch %d: %s", self.epoch, {k: v for k, v in record.items() if isinstance(v, (int, float))})

    def _resume(self) -> None:
        path = self.files.last
        state = load_checkpoint(path)  # CPU tensors; load_state_dict moves them to the device
        _check_training_state(state, path)
        recorded, _ = split_produced(state["config"])
        # The study's "made under other settings" check asks the same function (engine/run_config.py).
        self.cfg, changes = continue_run(self.cfg, recorded, str(self.out))
        self.record = checkpoint_record(state, path)
        if self.is_main and not self.files.run_record.exists():  # a run from before run.json, or one deleted
            write_run_record(self.files, self.record)
        if self.model.load_trained(state["model"], card_normalization(state["model_card"], path)) is not None:
            # The checkpoint's own normalisation wins: the weights were trained with it.
            self.normalization_source = state["model_card"].get(
                "normalization_source", "the checkpoint's (from before the source was recorded)")
            log.warning("%s normalises with %s, not the %s this config gives; keeping the checkpoint's",
                        path, self.model.describe_normalization(), self.data.normalization.source)
        saved_groups, groups = len(state["optimizer"]["param_groups"]), len(self.optimizer.param_groups)
        if saved_groups != groups:
            raise ConfigError(
                f"{path} holds an optimiser with {saved_groups} parameter group(s), this config builds "
                f"{groups} (optim.weight_decay_on = {self.cfg.optim.weight_decay_on!r}): resume with the "
                f"weight-decay scope the run started with (--set optim.weight_decay_on="
                f"{'all' if saved_groups == 1 else 'weights'})"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.method_state.load_state_dict(state["method"])
        self.data.stream.load_state_dict(state["stream"], state["world_size"])
        self.epoch, self.step, self.best_robust = state["epoch"], state["step"], state["best_robust"]
        self._restore_rng(state)
        self.metrics.truncate_after(self.epoch)
        self.selection.truncate_after(self.epoch)
        if changes and self.is_main:
            JsonLines(self.files.resumes).write({"epoch": self.epoch, "step": self.step, "changes": changes})
        if self.is_main:
            log.info("resumed %s at epoch %d, step %d%s", path, self.epoch, self.step,
                     f" with changes {changes}" if changes else "")

    def _restore_rng(self, state: dict) -> None:
        """Each rank's own RNG state on as many ranks as the checkpoint was written with; on
        another number of ranks rank 0 takes rank 0's and the others fresh streams of their own."""
        saved, ranks = state["world_size"], state["rng_ranks"]
        if saved == self.world.size:
            set_rng_state(ranks[self.rank])
            return
        if self.is_main:
            log.warning("resuming a %d-rank checkpoint on %d ranks: same epoch, omega and optimiser "
                        "state; the shards and random streams differ from an uninterrupted run",
                        saved, self.world.size)
            set_rng_state(ranks[0])
        else:
            seed_everything(rank_seed(self.cfg.runtime.seed, self.rank, self.epoch))


# What `_state` writes and a resume needs (run_record aside: runs from before run.json lack it and
# are resumed, engine/run_record.py).
_TRAINING_STATE = ("model", "model_card", "optimizer", "scaler", "method", "stream", "rng_ranks", "world_size",
                   "epoch", "step", "best_robust", "config")


def _check_training_state(state: dict, path: Path) -> None:
    """A ValueError naming `path`, what it lacks and what to do, for a checkpoint of the same
    format version written by an earlier engine that lacked some of the training state."""
    missing = [key for key in _TRAINING_STATE if key not in state]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it was written by an earlier biamat-engine, whose "
                         "checkpoints this one cannot resume. Continue the run with the version that wrote it, "
                         "or start it again (--overwrite)")


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          on_step: StepHook | None = None) -> list[dict]:
    """Trains a run into `out_dir` and returns its metrics records."""
    return Trainer(cfg, out_dir, resume=resume, overwrite=overwrite, on_step=on_step).fit()
