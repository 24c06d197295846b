"""Measure copy-detection descriptors on planted edits of real photos and on imagededup-testdata.

For each descriptor (``--descriptor PATH`` as ``pretrain.models.descriptors.load_descriptor`` reads it;
by default the shipped ``assets/bootstrap-backbone/`` class token and a random init of its architecture):

1. **calibration** split of ``raw-photos`` (``evaluation.copy_detection.split_of``), every photo with its
   12 planted copies: the cosine threshold of highest recall at precision >= 0.99 over all pairs of the
   pool (``operating_point``), and recall per edit there;
2. **held-out** split and **imagededup-testdata**, that threshold fixed: precision, recall per edit and
   group, DISC21 micro-AP over all pairs, and (held-out) how often the original is among a copy's
   1 / 10 / 50 nearest neighbours;
3. the **pHash stage alone** on the same pairs (``curation.decode.decode_record``'s hash, the default
   ``phash_radius``; images ingest rejects never pair);
4. **descriptor + geometric verification** (``curation.geometric``): candidates down to a looser cosine
   (the ``--candidates-per-image`` x N-th best calibration pair), kept when SIFT + RANSAC verifies them
   with (min inliers, min spread) chosen on calibration for precision >= 0.99; predicted = pairs above
   the descriptor's own threshold, plus verified candidates;
5. **throughput**: descriptor images/s on one core (``torch.set_num_threads(1)``) against the bare
   backbone forward pass on the same preprocessed images, best of 10 alternating rounds on 128 images.

    .venv/bin/python -m benchmarks.measure_copy_detection [--descriptor PATH ...] [--photos N]
        [--no-baselines] [--random-init] [--no-geometric]

Writes ``benchmarks/results/copy_detection.md`` and ``copy_detection.json`` (``--out STEM`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, machine, write_result
from benchmarks.copy_detection_parts import (
    Pool,
    evaluate,
    geometric_rows,
    phash_scores,
    random_like,
    throughput,
)
from benchmarks.measure_phash_radius import shared_data_dir
from curation.config import HashDedupConfig
from evaluation.copy_detection import GROUPS, generated_pool, operating_point, split_photos, ukbench_pool
from pretrain.models.descriptors import Descriptor, load_descriptor

RESULTS = REPO / "benchmarks" / "results"
BOOTSTRAP = REPO / "assets" / "bootstrap-backbone"
TARGET_PRECISION = 0.99
RANKS = (1, 10, 50)


def descriptor_rows(desc: Descriptor, pools: dict[str, Pool]) -> dict[str, Any]:
    """The descriptor's threshold at the target precision on calibration, then every pool at it."""
    t0 = time.perf_counter()
    sims = {}
    for name, pool in pools.items():
        emb = pool.embed(desc)
        sims[name] = emb @ emb.T
    scores = {name: sims[name][pool.i, pool.j] for name, pool in pools.items()}
    op = operating_point(scores["calibration"], pools["calibration"].positive, TARGET_PRECISION)
    out: dict[str, Any] = {"model_id": desc.model_id, "threshold": op.threshold, "pools": {}}
    for name, pool in pools.items():
        out["pools"][name] = evaluate(pool, scores[name], scores[name] >= op.threshold)
        if pool.generated:
            out["pools"][name]["ranks"] = pool.original_ranks(sims[name], RANKS)
    out["seconds"] = time.perf_counter() - t0
    out["_scores"] = scores
    return out


def phash_rows(pools: dict[str, Pool], radius: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_id": f"pHash (pipeline, radius {radius})",
        "threshold": 64 - radius,
        "pools": {},
    }
    for name, pool in pools.items():
        score = phash_scores(pool)
        out["pools"][name] = evaluate(pool, score, score >= 64 - radius)
    return out


# ----------------------------------------------------------------------------- markdown
def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_table(rows: list[dict[str, Any]], pool: str) -> str:
    groups = [g for g in GROUPS if any(g in r["pools"][pool]["groups"] for r in rows)]
    head = "| detector | threshold | precision | recall (all pairs) | " + " | ".join(
        f"recall {g}" for g in groups
    )
    lines = [head + " | μAP | FP |", "|---|---:|---:|---:|" + "---:|" * len(groups) + "---:|---:|"]
    for r in rows:
        p = r["pools"][pool]
        cells = " | ".join(_f(p["groups"].get(g)) for g in groups)
        thr = r["threshold"] if isinstance(r["threshold"], str) else _f(r["threshold"], 4)
        lines.append(f"| {r['label']} | {thr} | {_f(p['precision'], 4)} | {_f(p['recall'])} | {cells} | "
                     f"{_f(p['micro_ap'])} | {p['fp']} |")  # fmt: skip
    return "\n".join(lines)


def edit_table(rows: list[dict[str, Any]], pool: str, names: list[str]) -> str:
    lines = ["| detector | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in rows:
        edits = r["pools"][pool]["edits"]
        lines.append(f"| {r['label']} | " + " | ".join(_f(edits.get(n)) for n in names) + " |")
    return "\n".join(lines)


def rank_table(rows: list[dict[str, Any]], pool: str) -> str:
    lines = ["| descriptor | group | " + " | ".join(f"original in top {k}" for k in RANKS) + " |",
             "|---|---|" + "---:|" * len(RANKS)]  # fmt: skip
    for r in rows:
        for g, ranks in r["pools"][pool].get("ranks", {}).items():
            lines.append(f"| {r['label']} | {g} | " + " | ".join(_f(ranks[str(k)]) for k in RANKS) + " |")
    return "\n".join(lines)


def report(
    rows: list[dict[str, Any]], pools: dict[str, Pool], args: argparse.Namespace, extra: list[str]
) -> str:
    sizes = ", ".join(f"{n}: {len(p.items)} images, {len(p.positive):,} pairs, {int(p.positive.sum()):,} positive"
                      for n, p in pools.items())  # fmt: skip
    out = [
        "# Copy detection measurement\n",
        f"Command: `{' '.join(['.venv/bin/python -m benchmarks.measure_copy_detection', *args.argv])}`\n",
        f"Machine: {machine()}\n",
        f"Pools: {sizes}. Thresholds are chosen on calibration (precision >= {TARGET_PRECISION}) and fixed.\n",
    ]
    for pool in pools:
        out += [f"## {pool}\n", summary_table(rows, pool), "", "Recall per edit (copy vs. its original):\n",
                edit_table(rows, pool, pools[pool].single_edits), ""]  # fmt: skip
        if pools[pool].generated:
            out += ["Nearest neighbours: the original among a copy's k nearest images of other photos:\n",
                    rank_table([r for r in rows if "ranks" in r["pools"][pool]], pool), ""]  # fmt: skip
    return "\n".join(out + extra) + "\n"


# ----------------------------------------------------------------------------- main
def build_pools(photos: int | None) -> dict[str, Pool]:
    data = shared_data_dir()
    splits = split_photos((data / "raw-photos" / "images").iterdir())
    return {
        "calibration": Pool(generated_pool(splits["calibration"][:photos]), generated=True),
        "heldout": Pool(generated_pool(splits["heldout"][:photos]), generated=True),
        "imagededup-testdata": Pool(ukbench_pool(data / "imagededup-testdata"), generated=False),
    }


def descriptors(args: argparse.Namespace) -> list[tuple[str, Descriptor]]:
    out = []
    paths = ([BOOTSTRAP] if not args.no_baselines else []) + [Path(p) for p in args.descriptor]
    for path in paths:
        desc = load_descriptor(path)
        label = "bootstrap backbone, class token" if path == BOOTSTRAP else f"`{path.name}` ({desc.kind})"
        out.append((label, desc))
        if (path == BOOTSTRAP or args.random_init) and desc.kind != "sscd-torchscript":
            out.append((f"random init of {label.split(',')[0]}", random_like(desc)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--descriptor", nargs="*", default=[], help="descriptor files (load_descriptor)")
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the bootstrap backbone and its random init"
    )
    parser.add_argument("--random-init", action="store_true", help="add a random init of every --descriptor")
    parser.add_argument("--photos", type=int, default=None, help="first N photos of each split (quick runs)")
    parser.add_argument("--no-geometric", action="store_true", help="skip geometric verification")
    parser.add_argument("--candidates-per-image", type=float, default=4.0, help="geometric candidate budget")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "copy_detection", help="result files' path stem"
    )
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    pools = build_pools(args.photos)
    radius = HashDedupConfig().phash_radius
    rows: list[dict[str, Any]] = []
    extra: list[str] = []
    descs = descriptors(args)
    for label, desc in descs:
        row = descriptor_rows(desc, pools)
        row["label"] = label
        rows.append(row)
        if not args.no_geometric and "@random" not in desc.model_id:
            geo = geometric_rows(row, pools, args.candidates_per_image, TARGET_PRECISION)
            geo["label"] = f"{label} + geometric"
            rows.append(geo)
    phash = phash_rows(pools, radius)
    phash["label"] = f"pHash alone (radius {radius})"
    phash["threshold"] = f"<= {radius} bits"
    rows.append(phash)
    extra += ["## Throughput (one core)\n", throughput(descs, pools["heldout"])]
    for r in rows:
        r.pop("_scores", None)
    json_out = args.out.with_suffix(".json")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1, default=str) + "\n")
    write_result(args.out.with_suffix(".md"), report(rows, pools, args, extra))


if __name__ == "__main__":
    main()
