"""The demo-scale study behind the demo's data setting (docs/demo-study.md).

Runs `biamat-engine demo` (both arms: plain AT and AT+BiaMAT, one budget) for every candidate
setting and seed, one at a time, and appends each finished run to OUT/results.json with the
machine, revision and load average. Runs already in the file are skipped, so it resumes.

    PYTHONPATH=. python scripts/demo_sweep.py --out runs/demo-study --seeds 0 1 2
    PYTHONPATH=. python scripts/demo_sweep.py --out runs/demo-study --summary   # the table

Until the `study` command exists (its demo scale will replace this), this is the longer
comparison the demo points to.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Candidate data settings, easiest first; every one runs with the demo preset's model, batch,
# schedule and attack (only the data knobs change).
SETTINGS = {
    "d0-c10-n400": {"difficulty": 0, "classes": 10, "n": 400},
    "d1-c10-n400": {"difficulty": 1, "classes": 10, "n": 400},
    "d2-c10-n400": {"difficulty": 2, "classes": 10, "n": 400},
    "d3-c16-n640": {"difficulty": 3, "classes": 16, "n": 640},
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def revision() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_one(out: Path, name: str, knobs: dict, seed: int, device: str) -> dict:
    folder = out / name / f"seed{seed}"
    cmd = [sys.executable, "-m", "cli.app", "demo", "--out", str(folder), "--seed", str(seed), "--device", device,
           "--difficulty", str(knobs["difficulty"]), "--classes", str(knobs["classes"]), "--n", str(knobs["n"])]
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((folder / "demo.json").read_text())
    return {"setting": name, "knobs": knobs, "seed": seed, "wall_s": round(wall, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "revision": revision(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "results": {arm: {k: r[k] for k in ("clean_acc", "robust_acc", "n", "train_seconds", "selection")
                              if k in r} for arm, r in summary["results"].items()}}


def summarise(records: list[dict]) -> str:
    """A markdown table: per setting, mean +- standard deviation over seeds, both arms."""
    lines = ["| setting | seeds | AT clean | AT PGD-20 | BiaMAT clean | BiaMAT PGD-20 | PGD-20 diff | "
             "related high % | unrelated high % | demo wall s (load) |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"

    for name in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == name]
        get = lambda arm, key: [r["results"][arm][key] for r in rs]  # noqa: E731
        diff = [b - a for a, b in zip(get("at", "robust_acc"), get("biamat", "robust_acc"))]
        high = {}
        for group in (0, 1):
            rows = [r["results"]["biamat"]["selection"][group] for r in rs]
            high[group] = [row[2] / max(row[1], 1) for row in rows]
        walls = ", ".join(f"{r['wall_s']:.0f} ({r['load_before'][0]:.1f})" for r in rs)
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rs)} | {ms(get('at', 'clean_acc'))} | "
                     f"{ms(get('at', 'robust_acc'))} | {ms(get('biamat', 'clean_acc'))} | "
                     f"{ms(get('biamat', 'robust_acc'))} | {ms(diff)} | {ms(high[0])} | {ms(high[1])} | {walls} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo-study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--summary", action="store_true", help="print the table of OUT/results.json and stop")
    args = parser.parse_args()

    path = args.out / "results.json"
    records = json.loads(path.read_text()) if path.exists() else []
    if args.summary:
        print(summarise(records))
        return
    # Seed-major order: if the sweep is cut short, every setting has the same seeds done.
    for seed in args.seeds:
        for name in args.settings:
            if any(r["setting"] == name and r["seed"] == seed for r in records):
                continue
            print(f"{name} seed {seed} ...", file=sys.stderr, flush=True)
            record = run_one(args.out, name, SETTINGS[name], seed, args.device)
            records.append(record)
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records, indent=2) + "\n")
            res = record["results"]
            print(f"  {record['wall_s']:.0f} s, load {record['load_before'][0]:.1f}: "
                  f"AT {res['at']['clean_acc']:.3f}/{res['at']['robust_acc']:.3f}, "
                  f"BiaMAT {res['biamat']['clean_acc']:.3f}/{res['biamat']['robust_acc']:.3f}",
                  file=sys.stderr, flush=True)
    print(summarise(records))


if __name__ == "__main__":
    main()
