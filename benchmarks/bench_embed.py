"""Embedding throughput of the embed stage end to end against the bare forward pass, same run.

The stage (``curation.embed.embed_catalog``): the catalog's accepted images -> read each file's
bytes by uri, open it with the one image opener (JPEGs DCT-draft decoded to >= S), resize to S x S,
normalise, batch, the descriptor's forward pass, float16 vectors committed to the ``embeddings``
table every ``--partition`` images (the table removed before each round, so every image is embedded). The
baseline: the same descriptor's forward pass on ready-made tensors of the same shape, batch for
batch, nothing else. Their ratio is what decoding, I/O, batching and the commits cost on top of
the network. Two more rows split that cost: decode + preprocess alone (the stage's thread pool,
no network), and the commits alone (``write_embeddings`` of the same vectors in the same chunks).
The rows alternate in rounds; reported are images/s of the best round and the median.

    .venv/bin/python -m benchmarks.bench_embed [--images 500] [--checkpoint assets/bootstrap-backbone]
        [--arch vit_small --size 224] [--batch 64] [--partition 4096] [--decode-workers 2]
        [--threads 1] [--rounds 3] [--device auto] [--precision auto]

``--arch`` (instead of ``--checkpoint``) times a random-init backbone of that size at ``--size``.

``--commit-rows N`` measures instead what a chunk's commit costs as the table grows: N random 384-d
vectors committed in sorted chunks of ``--partition`` (as the stage writes a first run: each chunk a
contiguous range of sorted ids, so Delta's MERGE prunes files by the source's key range), then one
chunk of new ids spread over half the id range (an incremental run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from benchmarks.common import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "embed.md"


def image_catalog(files: list[Path], root: Path) -> Any:
    """A catalog whose images table holds ``files`` as accepted rows (ids: sha256 of the bytes)."""
    from data_catalog.catalog import Catalog
    from data_catalog.images import IMAGES_SCHEMA, upsert_images

    rows = [
        {n: None for n in IMAGES_SCHEMA.names}
        | {"uri": str(f), "image_id": hashlib.sha256(f.read_bytes()).hexdigest(), "status": "accepted"}
        for f in files
    ]
    catalog = Catalog(str(root))
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "bench")
    return catalog


def load(args: argparse.Namespace) -> Any:
    from curation.embed import load_embedder
    from pretrain.models import build_backbone
    from pretrain.models.descriptors import backbone_descriptor

    if args.arch:
        torch.manual_seed(0)
        model = build_backbone(args.arch, img_size=args.size, patch_size=14 if args.size % 14 == 0 else 16)
        return backbone_descriptor(model.eval(), "random-seed0")
    return load_embedder(args.checkpoint, "semantic")


def run(args: argparse.Namespace, files: list[Path], tmp: Path) -> tuple[list[dict[str, Any]], Any]:
    from curation.config import EmbedConfig
    from curation.embed import catalog_items, embed_catalog, resolve_device
    from curation.embed_workers import decoded
    from data_catalog.catalog import Catalog
    from data_catalog.embeddings import write_embeddings
    from data_catalog.uris import UriReader

    descriptor = load(args)
    device = resolve_device(args.device)
    descriptor.to(device)
    cfg = EmbedConfig(batch_size=args.batch, partition_size=args.partition, decode_workers=args.decode_workers,
                      device=args.device, precision=args.precision)  # fmt: skip
    catalog = image_catalog(files, tmp / "images")
    items = catalog_items(catalog).to_pylist()
    n, side = len(items), descriptor.input_size
    ready = [torch.randn(min(args.batch, n - s), 3, side, side) for s in range(0, n, args.batch)]
    vectors = np.random.default_rng(0).standard_normal((n, descriptor.dim)).astype(np.float32)
    rounds = iter(range(10**6))  # a fresh table per commits-only round

    def stage() -> None:
        out = embed_catalog(catalog, descriptor, cfg, "bench")
        assert out["embedded"] == n and not out["failed"], out

    def bare() -> None:
        from curation.embed_workers import forward, use_bf16

        for x in ready:
            forward(descriptor, x, device, use_bf16(device, args.precision))

    def decode_only() -> None:
        ahead = max(2 * args.batch, 4 * args.decode_workers)
        with UriReader() as reader:
            for _, image in decoded(reader, items, descriptor, args.decode_workers, True, ahead):
                assert not isinstance(image, str), image

    def commits_only() -> None:
        target = Catalog(str(tmp / f"commits-{next(rounds)}"))
        ids = [r["image_id"] for r in items]
        for s in range(0, n, args.partition):
            write_embeddings(
                target,
                descriptor.model_id,
                ids[s : s + args.partition],
                vectors[s : s + args.partition],
                "bench",
            )

    fns = {"stage: catalog images -> embeddings table": stage, "bare forward pass on tensors": bare,
           "decode + preprocess only (stage's threads)": decode_only, "commits only (write_embeddings)": commits_only}  # fmt: skip
    decode_only()  # warm the page cache
    embeddings = Path(catalog.root) / "tables" / "embeddings"
    return alternate(fns, n, args.rounds, lambda: shutil.rmtree(embeddings, ignore_errors=True)), descriptor


def alternate(fns: dict[str, Any], n: int, rounds: int, reset: Any) -> list[dict[str, Any]]:
    """Each function once per round, in turn (``reset()`` before each, untimed) -> rows of images/s
    of the best and the median round, and the best against the second function's (the baseline)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            reset()  # the stage embeds every image again
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rows: list[dict[str, Any]] = [
        {"what": k, "best": n / min(v), "median": n / statistics.median(v)} for k, v in times.items()
    ]
    for row in rows:
        row["ratio"] = row["best"] / rows[1]["best"]
    return rows


def commit_scaling(args: argparse.Namespace, tmp: Path) -> str:
    """Seconds per chunk commit while a table of ``args.commit_rows`` vectors is written, then for a
    chunk of new ids interleaved with the stored ones."""
    from data_catalog.catalog import Catalog
    from data_catalog.embeddings import write_embeddings

    rng = np.random.default_rng(0)
    n, size = args.commit_rows, args.partition
    ids = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(n + size))
    new = set(rng.choice(len(ids), size, replace=False).tolist())
    old = [x for i, x in enumerate(ids) if i not in new]
    catalog, times = Catalog(str(tmp / "commits")), []
    for s in range(0, len(old), size):
        chunk = old[s : s + size]
        t0 = time.perf_counter()
        write_embeddings(catalog, "m", chunk, rng.standard_normal((len(chunk), 384)), "bench")
        times.append(time.perf_counter() - t0)
    spread = sorted(x for i, x in enumerate(ids) if i in new)[: size // 2]
    t0 = time.perf_counter()
    write_embeddings(catalog, "m", spread, rng.standard_normal((len(spread), 384)), "bench")
    late = time.perf_counter() - t0
    k = max(1, len(times) // 10)
    return "\n".join([
        f"## Embeddings commits: {n:,} float16 384-d vectors in chunks of {size:,}", "",
        f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}.", "",
        "| commit | seconds |", "|---|---:|",
        f"| first {k} chunks (mean) | {statistics.mean(times[:k]):.3f} |",
        f"| last {k} chunks (mean), table at {len(old):,} rows | {statistics.mean(times[-k:]):.3f} |",
        f"| {len(spread):,} new ids spread over half the id range, table at {len(old):,} rows | {late:.3f} |",
        "", f"Command: `.venv/bin/python -m benchmarks.bench_embed {' '.join(args.argv)}`", "",
    ])  # fmt: skip


def table(rows: list[dict[str, Any]], args: argparse.Namespace, descriptor: Any, n: int) -> str:
    from curation.embed import resolve_device, use_bf16

    device = resolve_device(args.device)
    precision = "bf16 autocast" if use_bf16(device, args.precision) else "fp32"
    lines = [
        f"## Embed stage: {descriptor.model_id} at {descriptor.input_size} x {descriptor.input_size}, "
        f"batch {args.batch}, {device} {precision}",
        "",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}; decode threads {args.decode_workers}; "
        f"commit every {args.partition} images (float16).",
        f"{n} raw photos ({args.data.name}), {args.rounds} alternating rounds; load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| what | images/s (best round) | images/s (median round) | vs bare forward (best) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['what']} | {r['best']:.1f} | {r['median']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    lines += ["", f"Command: `.venv/bin/python -m benchmarks.bench_embed {' '.join(args.argv)}`", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "assets" / "bootstrap-backbone")
    parser.add_argument("--arch", default=None, help="time a random-init backbone of this size instead")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--partition", type=int, default=4096)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
        / "raw-photos"
        / "images",
    )
    parser.add_argument("--commit-rows", type=int, default=None, help="measure commit cost instead")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.commit_rows:
        with tempfile.TemporaryDirectory() as tmp:
            write_result(args.out, commit_scaling(args, Path(tmp)))
        return 0
    files = sorted(p for p in args.data.glob("*") if p.is_file())[: args.images]
    if not files:
        print(f"skipped: no images in {args.data} (set DINOFLOW_SHARED_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows, descriptor = run(args, files, Path(tmp))
    write_result(args.out, table(rows, args, descriptor, len(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
