"""Loader throughput: images/s delivered to the device, interleaved primary + auxiliary batches.

Every backend gets the same data (random uint8 images written to temporary .beton files), the
same 128 + 128 batches through `loaders.stream.PairedStream`, training augmentation (pad-4 crop
+ flip) and float [0, 1] channels-last output on the device. Rows:
- ffcv: `FfcvStream` (FFCV's compiled decode + crop/flip pipeline);
- resident: `ResidentStream` (whole set in device memory, batched crop/flip kernel);
- dataloader: the plain reference, a torch DataLoader over PIL images with per-sample crop,
  flip and to-tensor written in PIL/numpy, workers = cores;
- more backends (DALI) plug in through `BACKENDS`: name -> factory(ctx) -> (primary, aux).
Warm-up (compilation, worker start) is excluded; each repeat times one primary epoch.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from benchmarks.common import environment, mean_std, sync, write_report
from loaders.beton import write_beton
from loaders.options import LoaderOptions
from loaders.stream import PairedStream
from loaders.types import ArrayDataset


@dataclass
class BenchContext:
    primary: ArrayDataset
    aux: ArrayDataset
    primary_path: Path
    aux_path: Path
    device: torch.device
    batch_size: int
    workers: int
    seed: int = 0


class PilDataLoaderStream:
    """The plain reference: torch DataLoader, PIL images, per-sample transforms in worker processes."""

    def __init__(self, dataset: ArrayDataset, *, batch_size: int, device, seed: int, workers: int, pad: int = 4):
        from PIL import Image

        self.batch_size, self.device = batch_size, torch.device(device)
        self.info = dataset.info
        self._epoch = 0
        pil = _PilDataset([Image.fromarray(img) for img in dataset.images], dataset.labels, pad)
        self._loader = torch.utils.data.DataLoader(
            pil, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=False,
            persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self._loader)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)
        self._epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "position": 0}

    def load_state_dict(self, state: dict) -> None:
        self._epoch = int(state["epoch"])


class _PilDataset(torch.utils.data.Dataset):
    """Per-sample transforms the way torchvision's RandomCrop(padding=4) + RandomHorizontalFlip +
    ToTensor do them, without torchvision."""

    def __init__(self, images, labels, pad: int):
        self.images, self.labels, self.pad = images, labels, pad

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image, ImageOps

        img = self.images[i]
        w, h = img.size
        padded = ImageOps.expand(img, border=self.pad, fill=0)
        dx, dy = np.random.randint(0, 2 * self.pad + 1, size=2)
        img = padded.crop((dx, dy, dx + w, dy + h))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        return x, int(self.labels[i])


def _ffcv(ctx: BenchContext):
    from loaders.backends.ffcv_backend import FfcvStream

    kw = dict(batch_size=ctx.batch_size, device=ctx.device, train=True, seed=ctx.seed, options=LoaderOptions(workers=ctx.workers))
    return FfcvStream(ctx.primary_path, **kw), FfcvStream(ctx.aux_path, **kw)


def _resident(ctx: BenchContext):
    from loaders.backends.resident import ResidentStream

    kw = dict(batch_size=ctx.batch_size, device=ctx.device, train=True, seed=ctx.seed)
    return ResidentStream(ctx.primary, **kw), ResidentStream(ctx.aux, **kw)


def _dali(ctx: BenchContext):
    from loaders.backends.dali_backend import DaliStream

    kw = dict(batch_size=ctx.batch_size, device=ctx.device, train=True, seed=ctx.seed,
              options=LoaderOptions(workers=ctx.workers))  # DALI's CPU threads, as many as the others' workers
    return DaliStream(ctx.primary, **kw), DaliStream(ctx.aux, **kw)


def _dataloader(ctx: BenchContext):
    kw = dict(batch_size=ctx.batch_size, device=ctx.device, seed=ctx.seed, workers=ctx.workers)
    return PilDataLoaderStream(ctx.primary, **kw), PilDataLoaderStream(ctx.aux, **kw)


BACKENDS: dict[str, Callable[[BenchContext], tuple]] = {
    "ffcv": _ffcv, "resident": _resident, "dali": _dali, "dataloader": _dataloader,
}


def _time_epoch(paired: PairedStream, device: torch.device) -> tuple[float, int]:
    images = 0
    start = time.perf_counter()
    for batch in paired:
        images += len(batch.x_pri) + len(batch.x_aux)
    sync(device)
    return time.perf_counter() - start, images


def random_dataset(n: int, size: int, classes: int, seed: int, name: str) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                        rng.integers(0, classes, n), [f"c{i}" for i in range(classes)], name)


def run(*, n: int = 10_000, size: int = 32, device: str = "cpu", repeats: int = 3, batch_size: int = 128,
        workers: int | None = None, backends: tuple[str, ...] = ("ffcv", "resident", "dataloader", "dali"),
        out: Path | None = None) -> dict:
    """Times each backend; a backend whose extra is missing becomes a note, not a row."""
    dev = torch.device(device)
    workers = workers or os.cpu_count() or 1
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        primary = random_dataset(n, size, 10, 0, "bench-primary")
        aux = random_dataset(n, size, 20, 1, "bench-aux")
        ctx = BenchContext(primary, aux, Path(tmp) / "primary.beton", Path(tmp) / "aux.beton", dev, batch_size, workers)
        write_beton(ctx.primary_path, primary, format="random")
        write_beton(ctx.aux_path, aux, format="random")
        for name in backends:
            try:
                pri, aux_stream = BACKENDS[name](ctx)
            except ImportError as err:
                notes.append(f"{name}: skipped ({err})")
                continue
            paired = PairedStream(pri, [aux_stream])
            _time_epoch(paired, dev)  # warm-up: compilation, workers, first touch of the pages
            times = []
            for _ in range(repeats):
                seconds, images = _time_epoch(paired, dev)
                times.append(images / seconds)
            rate, rate_std = mean_std(times)
            rows.append({"backend": name, "images_per_s_mean": rate, "images_per_s_std": rate_std,
                         "images_per_epoch": images, "repeats": repeats})
            del paired, pri, aux_stream
    baseline = next((r["images_per_s_mean"] for r in rows if r["backend"] == "dataloader"), None)
    for r in rows:
        r["vs_dataloader"] = r["images_per_s_mean"] / baseline if baseline else None
    report = {
        "benchmark": "loader", **environment(dev),
        "config": {"n": n, "size": size, "batch": f"{batch_size}+{batch_size}", "workers": workers,
                   "device": str(dev), "augment": "pad-4 crop + flip", "data": "random uint8"},
        "rows": rows, "notes": notes,
    }
    write_report(report, out)
    return report
