"""Geometric verification throughput: one thread against the default (every core), same pairs, same run.

The pairs semantic dedup and leak removal verify (``curation.geometric.measure_uri_pairs``): each of
``--photos`` raw photos against its 85% crop (a copy) and against the next photo (not one), read from
JPEG files, SIFT on both (the second also mirrored), ratio test, affine RANSAC. Rounds alternate the
two settings; the table gives the best and median of ``--rounds`` per setting, pairs/s and images/s,
and whether both settings gave the same matches.

    .venv/bin/python -m benchmarks.bench_geometric [--photos 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_result
from benchmarks.measure_phash_radius import shared_data_dir
from curation.geometric import default_threads, measure_uri_pairs
from data_catalog.image import open_image
from data_catalog.uris import UriReader
from evaluation.copy_detection import copy_bytes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "geometric.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    photos = sorted((shared_data_dir() / "raw-photos" / "images").glob("*.JPEG"))[: args.photos]
    settings = {"1 thread": 1, f"{default_threads()} threads (default)": default_threads()}
    times: dict[str, list[float]] = {k: [] for k in settings}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for p in photos:
            data = p.read_bytes()
            crop = Path(tmp) / f"crop-{p.name}"
            crop.write_bytes(copy_bytes(data, open_image(data), "crop_85"))
            files.append((str(p), str(crop)))
        pairs = [(a, c) for a, c in files] + [
            (files[n][0], files[(n + 1) % len(files)][0]) for n in range(len(files))
        ]
        for _ in range(args.rounds):
            for label, threads in settings.items():
                with UriReader() as reader:
                    t0 = time.perf_counter()
                    results[label] = measure_uri_pairs(pairs, reader, threads)
                    times[label].append(time.perf_counter() - t0)
    images = len({u for pair in pairs for u in pair})
    same = len({tuple(r) for r in results.values()}) == 1
    base = min(times["1 thread"])
    lines = [
        "# Geometric verification throughput",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_geometric --photos {args.photos} --rounds {args.rounds}`",
        "",
        f"Machine: {machine()}",
        "",
        f"{len(pairs)} pairs of {images} images ({len(photos)} raw photos, their 85% crops); features computed "
        f"once per image per run; both settings gave the same matches: {same}.",
        "",
        "| setting | best s | median s | pairs/s | images/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, ts in times.items():
        best = min(ts)
        lines.append(f"| {label} | {best:.2f} | {statistics.median(ts):.2f} | {len(pairs) / best:.1f} | "
                     f"{images / best:.1f} | {base / best:.2f}x |")  # fmt: skip
    write_result(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
