"""What the device itself can do, measured in seconds: the bf16 matmul rate (a realistic MFU
denominator beside the data sheet's peak) and the device-to-device copy bandwidth. Printed and
written as JSON by `python -m benchmarks.device --out FILE` (the GPU suite's first step).

The matmul is square and large enough to saturate the tensor cores (8192 on CUDA); the copy moves
a 1 GiB buffer and counts its bytes read plus written, as STREAM's copy does. On a CPU the same
code runs at small sizes so that the suite's rehearsal exercises it."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys

import torch

from benchmarks.common import environment, time_calls, write_report

log = logging.getLogger(__name__)


def matmul_flops(device: torch.device, n: int, dtype: torch.dtype, repeats: int = 5, loops: int = 10) -> dict:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs), median of `repeats` timings of `loops` calls."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_calls(lambda: torch.mm(a, b), device, repeats, warmup=3, loops=loops)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": 2 * n**3 / statistics.median(seconds),
            "seconds": seconds}


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 5, loops: int = 10) -> dict:
    """Bytes per second of `dst.copy_(src)` within the device (read + written bytes)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = time_calls(lambda: dst.copy_(src), device, repeats, warmup=2, loops=loops)
    return {"bytes": nbytes, "bytes_per_s": 2 * nbytes / statistics.median(seconds), "seconds": seconds}


def run(device: str = "auto") -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    report = {"benchmark": "device", **environment(dev)}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        report.update(compute_capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
                      multiprocessors=props.multi_processor_count)
        report["matmul"] = matmul_flops(dev, 8192, torch.bfloat16)
        report["copy"] = copy_bandwidth(dev, 1 << 30)
    else:  # the rehearsal: the same code at sizes a CPU answers in a second
        report["matmul"] = matmul_flops(dev, 256, torch.float32, repeats=3, loops=2)
        report["copy"] = copy_bandwidth(dev, 1 << 24, repeats=3, loops=2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    report = run(args.device)
    write_report(report, args.out)
    print(json.dumps({k: v for k, v in report.items() if k not in ("matmul", "copy")}))
    print(f"{report['matmul']['dtype']} matmul {report['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s, "
          f"copy {report['copy']['bytes_per_s'] / 1e9:.1f} GB/s")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
