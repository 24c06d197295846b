"""Near-duplicate search over copy vectors: the automatic faiss index against exact search.

Synthetic L2-normalised float16 vectors shaped like descriptors of a photo pool: ``n`` points around
``n / 100`` random centres (cosine to their centre about 0.5), and 1% of them near copies of earlier
points (cosine 0.85-0.98: the pairs dedup must find). ``curation.neardup.near_duplicate_pairs`` runs
the self-search with the index ``auto`` picks (IVF at 1M), k = ``SemanticDedupConfig.k``, on
``--threads`` faiss threads, timed (build, search). The baseline is exact search (``IndexFlatIP``) of
a random sample of queries against all n vectors, in the same run: recall@k of the automatic index's
neighbour lists, recall of the exact pairs above the threshold for those queries, recall of all
planted pairs, and the exact self-search time extrapolated from the sample. ``--indexes`` adds
other indexes at the same size (``flat`` is run only up to 200k).

    nice -n 10 .venv/bin/python -m benchmarks.bench_neardup [--n 1000000] [--dim 384] [--threads 2]

Writes ``benchmarks/results/neardup.md`` and ``neardup.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import machine, peak_mb, write_result
from curation.config import SemanticDedupConfig
from curation.vector_search import Search, build_index, choose_index, ivf_nlist, search_index

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def synthetic(n: int, dim: int, seed: int = 0, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n, dim] float16, unit rows; planted pairs [P, 2] (source, copy)) as the docstring."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 1), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float16)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim)).astype(
            np.float32
        ) / np.sqrt(dim)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = n // 100
    src = rng.choice(n - k, k, replace=False)
    sigma = rng.uniform(0.2, 0.6, k).astype(np.float32)  # cosine 1/sqrt(1+sigma^2): 0.86-0.98
    noise = rng.standard_normal((k, dim)).astype(np.float32) / np.sqrt(dim) * sigma[:, None]
    x = out[src].astype(np.float32) + noise
    out[n - k :] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, np.stack([src, np.arange(n - k, n)], axis=1)


def run_index(x: np.ndarray, kind: str, k: int, cfg: Search, nprobes: list[int]) -> list[dict]:
    """Build once, then self-search at each nprobe (IVF; one search for the others)."""
    start = time.perf_counter()
    index = build_index(x, cfg, kind)
    build_s = time.perf_counter() - start
    out = []
    for nprobe in nprobes if kind == "ivf" else [cfg.nprobe]:
        t = time.perf_counter()
        sims, idx = search_index(index, kind, x, k + 1, dataclasses.replace(cfg, nprobe=nprobe))
        search_s = time.perf_counter() - t
        name = f"ivf (nlist {ivf_nlist(len(x), cfg)}, nprobe {nprobe})" if kind == "ivf" else kind
        out.append({"index": name, "build_s": build_s, "search_s": search_s, "total_s": build_s + search_s,
                    "sims": sims, "idx": idx})  # fmt: skip
    return out


def pairs_of(sims: np.ndarray, idx: np.ndarray, rows: np.ndarray, threshold: float, n: int) -> set[int]:
    keep = (idx >= 0) & (idx != rows[:, None]) & (sims >= threshold)
    a, b = np.broadcast_to(rows[:, None], idx.shape)[keep], idx[keep]
    return set((np.minimum(a, b) * n + np.maximum(a, b)).tolist())


def evaluate(res: dict, exact: tuple[np.ndarray, np.ndarray], sample: np.ndarray, planted: np.ndarray,
             k: int, threshold: float, n: int) -> dict:  # fmt: skip
    es, ei = exact
    got_i = res["idx"][sample]
    hits = [len(set(a[a != q]) & set(e[e != q][:k])) for a, e, q in zip(got_i, ei, sample, strict=True)]
    exact_pairs = pairs_of(es, ei, sample, threshold, n)
    got_pairs = pairs_of(res["sims"][sample], got_i, sample, threshold, n)
    all_pairs = pairs_of(res["sims"], res["idx"], np.arange(n), threshold, n)
    planted_keys = set((planted[:, 0] * n + planted[:, 1]).tolist())
    out = {k2: round(v, 2) for k2, v in res.items() if k2.endswith("_s")}
    out.update(
        index=res["index"],
        recall_at_k=round(float(np.sum(hits)) / (k * len(sample)), 4),
        recall_pairs_above_threshold=round(len(exact_pairs & got_pairs) / max(len(exact_pairs), 1), 4),
        exact_pairs_in_sample=len(exact_pairs),
        recall_planted=round(len(planted_keys & all_pairs) / len(planted_keys), 4),
        pairs_found=len(all_pairs),
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample", type=int, default=2000, help="queries searched exactly (the baseline)")
    p.add_argument("--indexes", nargs="*", default=[], help="also run these (flat, ivf, hnsw)")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument(
        "--nprobe", type=int, nargs="*", default=[8], help="IVF nprobe values besides the config's"
    )
    p.add_argument("--out", default="neardup")
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)
    cfg = SemanticDedupConfig()
    search_cfg = Search.of(cfg)
    k = cfg.k
    t0 = time.perf_counter()
    x, planted = synthetic(args.n, args.dim)
    gen_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(args.n, min(args.sample, args.n), replace=False))
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    for s in range(0, args.n, 100_000):
        flat.add(x[s : s + 100_000].astype(np.float32))
    es, ei = flat.search(x[sample].astype(np.float32), k + 1)
    exact_s = time.perf_counter() - t0
    del flat
    auto = choose_index(args.n, args.dim, search_cfg)
    kinds = [auto] + [i for i in args.indexes if i != auto and not (i == "flat" and args.n > 200_000)]
    rows = []
    for kind in kinds:
        nprobes = list(dict.fromkeys(args.nprobe or [search_cfg.nprobe, 8]))
        for res in run_index(x, kind, k, search_cfg, nprobes):
            auto_row = kind == auto
            row = evaluate(res, (es, ei), sample, planted, k, args.threshold, args.n)
            rows.append({**row, "auto": auto_row})
            print(json.dumps(rows[-1]), flush=True)
    exact_full = exact_s * args.n / len(sample)
    doc = {"n": args.n, "dim": args.dim, "dtype": "float16", "threads": args.threads, "k": k,
           "threshold": args.threshold, "nprobe": search_cfg.nprobe, "exact_max": search_cfg.exact_max,
           "generate_s": round(gen_s, 1), "exact_sample_s": round(exact_s, 2), "sample": len(sample),
           "exact_full_extrapolated_s": round(exact_full, 0), "rows": rows, "peak_mb": round(peak_mb()),
           "machine": machine()}  # fmt: skip
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# Near-duplicate search: {args.n:,} x {args.dim} float16, {args.threads} threads, k = {k}",
        "",
        f"Machine: {doc['machine']}. Command: `nice -n 10 .venv/bin/python -m benchmarks.bench_neardup "
        f"--n {args.n} --dim {args.dim} --threads {args.threads}"
        + (f" --nprobe {' '.join(map(str, args.nprobe))}" if args.nprobe else "")
        + (f" --out {args.out}" if args.out != "neardup" else "")
        + "`.",
        f"Baseline: exact search (IndexFlatIP) of {len(sample):,} sampled queries against all vectors, "
        f"{exact_s:.1f} s; a full exact self-search extrapolates to {exact_full:,.0f} s.",
        "",
        "| index | auto | build s | search s | total s | vs exact (extrapolated) | recall@k | recall of pairs >= "
        f"{args.threshold} | recall planted | pairs found |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['index']} | {'yes' if r['auto'] else ''} | {r['build_s']} | {r['search_s']} | {r['total_s']} | "
            f"{exact_full / max(r['total_s'], 1e-9):.1f}x faster | {r['recall_at_k']} | "
            f"{r['recall_pairs_above_threshold']} ({r['exact_pairs_in_sample']}) | {r['recall_planted']} | {r['pairs_found']:,} |"
        )
    lines += ["", f"Peak memory {doc['peak_mb']} MB."]
    write_result(RESULTS / f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
