"""Every CPU benchmark with the arguments BENCHMARKS.md quotes, one after another (``make bench``).

Run: ``.venv/bin/python -m benchmarks.run_all [--only ingest catalog ...] [--list]``

Each benchmark runs in its own process and writes its table to ``benchmarks/results/<name>.md``;
this prints a line per benchmark with its exit status and time, and exits non-zero if any failed.
GPU rows need a CUDA machine: ``python -m benchmarks.bench_train --gpu vits14`` there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> module arguments, as quoted in BENCHMARKS.md
BENCHMARKS: dict[str, list[str]] = {
    "ingest": ["benchmarks.bench_ingest", "--repeats", "5"],
    "hashdedup": ["benchmarks.bench_hashdedup", "--radius", "6", "8"],
    "phash_radius": ["benchmarks.measure_phash_radius"],
    "copy_detection": ["benchmarks.measure_copy_detection"],
    "shards": ["benchmarks.bench_shards", "--repeats", "3"],
    "catalog": ["benchmarks.bench_catalog"],
    "dedup_catalog": ["benchmarks.bench_dedup_catalog"],
    "backbone": ["benchmarks.bench_backbone"],
    "augment": ["benchmarks.bench_augment"],
    "train": ["benchmarks.bench_train", "--steps", "30"],
    "eval_features": ["benchmarks.bench_eval_features"],
    "embed": ["benchmarks.bench_embed", "--images", "500", "--rounds", "3"],
    "kmeans": ["benchmarks.bench_kmeans"],
    "neardup": [
        "benchmarks.bench_neardup",
        "--n",
        "1000000",
        "--dim",
        "384",
        "--threads",
        "2",
        "--nprobe",
        "8",
    ],
    "geometric": ["benchmarks.bench_geometric"],
    "linear_probe": ["benchmarks.bench_linear_probe"],
    # the full CIFAR-10 seed probe end to end (about 30 min on 2 cores)
    "cifar_probe": ["benchmarks.bench_cifar_probe", "--precision", "bf16"],
    "demo": ["benchmarks.bench_demo"],  # the whole demo flow (minutes); last
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    if args.list:
        for name in names:
            print(f"{name}: python -m {' '.join(BENCHMARKS[name])}")
        return 0
    failed = []
    for i, name in enumerate(names, 1):
        cmd = [sys.executable, "-m", *BENCHMARKS[name]]
        print(f"[{i}/{len(names)}] {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        print(f"[{i}/{len(names)}] {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
