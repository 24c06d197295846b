"""Near-duplicate search over 64-bit hashes: ``curation.binary_index.near_pairs`` vs faiss.

Random 64-bit hashes (the worst case for the index: no structure to exploit) with 1% of them
copied at a planted distance 0..radius; all pairs within ``radius`` are searched at n = 100k and
1M on 2 threads. Baselines in the same run, at 100k: faiss ``IndexBinaryFlat.range_search``
(exact brute force) and faiss ``IndexBinaryMultiHash`` set up to be exact (3 tables of 21 bits,
``nflip = radius // 3``: by pigeonhole one 21-bit chunk is within that many flips). Reports
seconds, growth 100k -> 1M, recall of the planted pairs (must be 100%) and agreement with faiss.

    .venv/bin/python -m benchmarks.bench_hashdedup [--radius 6 8] [--sizes 100000 1000000] [--threads 2]

Writes ``benchmarks/results/hashdedup.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from benchmarks.common import write_result
from curation.binary_index import _plan, near_pairs
from curation.config import HashDedupConfig

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "hashdedup.md"


def planted_hashes(n: int, radius: int, frac: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n,) uint64: random hashes, the last ``frac * n`` being copies of earlier ones with
    0..radius random bits flipped; and the planted pairs (P, 2) int64 (i < j)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    k = int(n * frac)
    src = rng.choice(n - k, k, replace=False)
    dist = rng.integers(0, radius + 1, k)
    # flip `dist` distinct bits: take the first dist of a random permutation of the 64 bits
    perms = np.argsort(rng.random((k, 64)), axis=1)
    bits = np.where(np.arange(64)[None, :] < dist[:, None], np.uint64(1) << perms.astype(np.uint64), 0)
    h[n - k :] = h[src] ^ np.bitwise_or.reduce(bits.astype(np.uint64), axis=1)
    return h, np.stack([src, np.arange(n - k, n)], axis=1).astype(np.int64)


def pair_keys(pairs: np.ndarray, n: int) -> np.ndarray:
    return pairs[:, 0] * n + pairs[:, 1]


def faiss_pairs(index: faiss.IndexBinary, x: np.ndarray, radius: int) -> np.ndarray:
    """All pairs i < j from a faiss self range search (faiss keeps distances < its radius)."""
    index.add(x)
    lims, _, ids = index.range_search(x, radius + 1)
    rows = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
    keep = rows < ids
    return np.stack([rows[keep], ids[keep]], axis=1).astype(np.int64)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"faiss {faiss.__version__}, torch {torch.__version__}"
    )


def run_radius(r: int, sizes: list[int], threads: int, baseline_size: int) -> list[str]:
    """One markdown table (ours at every size, faiss at ``baseline_size``) and its summary lines."""
    rows, times = [], {}
    for n in sizes:
        h, planted = planted_hashes(n, r)
        pairs, secs = timed(lambda h=h: near_pairs(h, r, threads=threads))
        times[n] = secs
        recall = np.isin(pair_keys(planted, n), pair_keys(pairs, n)).mean()
        m = _plan(len(np.unique(h)), r)
        method = f"multi-index hashing, {m} blocks" if m else "brute force"
        rows.append((f"near_pairs ({method})", n, secs, len(pairs), recall, ""))
        print(rows[-1], flush=True)
        if n == baseline_size:
            x = h.view(np.uint8).reshape(n, 8)
            ours = np.sort(pair_keys(pairs, n))
            flat, t_flat = timed(lambda x=x: faiss_pairs(faiss.IndexBinaryFlat(64), x, r))
            agree = "same pairs" if np.array_equal(np.sort(pair_keys(flat, n)), ours) else "DIFFER"
            rows.append(
                ("faiss IndexBinaryFlat range_search (brute force)", n, t_flat, len(flat), None, agree)
            )
            mh = faiss.IndexBinaryMultiHash(64, 3, 21)
            mh.nflip = r // 3
            multi, t_mh = timed(lambda x=x, mh=mh: faiss_pairs(mh, x, r))
            agree = "same pairs" if np.array_equal(np.sort(pair_keys(multi, n)), ours) else "DIFFER"
            rows.append(
                (f"faiss IndexBinaryMultiHash(3 x 21 bits, nflip {r // 3})", n, t_mh, len(multi), None, agree)
            )
    lines = [
        f"## Radius {r}",
        "",
        "| method | n | seconds | pairs found | planted recall | vs ours |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, n, secs, npairs, recall, agree in rows:
        rec = "" if recall is None else f"{recall:.4f}"
        lines.append(f"| {name} | {n:,} | {secs:.2f} | {npairs:,} | {rec} | {agree} |")
    lines.append("")
    if len(times) > 1:
        a, b = min(times), max(times)
        lines.append(f"Growth {a:,} -> {b:,} (x{b // a} items): x{times[b] / times[a]:.1f} time.")
    base = [row for row in rows if row[1] == baseline_size]
    if len(base) == 3:
        lines.append(
            f"At {baseline_size:,}: near_pairs is x{base[1][2] / base[0][2]:.1f} faster than faiss "
            f"brute force and x{base[2][2] / base[0][2]:.1f} faster than faiss IndexBinaryMultiHash."
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--radius", type=int, nargs="+", default=[HashDedupConfig().phash_radius])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-size", type=int, default=100_000, help="n for the faiss baselines")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    lines = [
        f"# Hash near-duplicate search ({args.threads} threads)",
        "",
        f"Machine: {machine()}",
        "",
        "Command: `.venv/bin/python -m benchmarks.bench_hashdedup "
        f"--radius {' '.join(map(str, args.radius))} --sizes {' '.join(map(str, args.sizes))} "
        f"--threads {args.threads}`",
        "",
        "Random 64-bit hashes, 1% planted copies at distance 0..radius. Recall = planted pairs found.",
        "Time grows faster than n: a table's key must hold ~log2(n) bits to keep candidates few, so",
        "larger n needs more blocks and C(m, m - r) more tables (one sort or counting pass each).",
        f"Load average at start (the machine may be shared): {os.getloadavg()[0]:.1f}.",
        "",
    ]
    for r in args.radius:
        lines += run_radius(r, args.sizes, args.threads, args.baseline_size)
    write_result(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    main()
