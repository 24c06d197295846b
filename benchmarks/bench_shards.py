"""Dataset-version writing throughput: ``create_dataset_version`` vs a naive webdataset ShardWriter loop.

Run: ``.venv/bin/python -m benchmarks.bench_shards [--repeats 2] [--images DIR] [--max-side 256]``

Both write the same images (500 raw photos, JPEG, widths 68-2400 px) as ~100 MB tar shards:

- copy: original bytes + a json record per sample;
- re-encode: longer side at most ``--max-side``, JPEG quality 90. The naive loop does a full
  decode, ``exif_transpose``, RGB, LANCZOS resize, save; ours adds DCT-domain draft decoding and
  ``workers`` threads.

Ours is timed end to end (catalog read, ordering, shards, md5s, index, Delta commit). Best of
``--repeats`` alternating runs (the machine is shared). Writes ``benchmarks/results/shards.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import webdataset as wds
from PIL import Image, ImageOps

from benchmarks.common import write_result
from curation.dataset_version import create_dataset_version
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, upsert_images

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = (
    Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "raw-photos" / "images"
)
SHARD_BYTES = 100_000_000


def naive(paths: list[str], out: Path, max_side: int | None) -> int:
    """The obvious loop: one thread, webdataset's ShardWriter, full decode when re-encoding."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "naive-%06d.tar"), maxsize=SHARD_BYTES, verbose=0) as sink:
        for path in paths:
            data = Path(path).read_bytes()
            key = hashlib.sha256(data).hexdigest()
            if max_side is not None:
                with Image.open(io.BytesIO(data)) as img:
                    rgb = ImageOps.exif_transpose(img).convert("RGB")
                if max(rgb.size) > max_side:
                    scale = max_side / max(rgb.size)
                    rgb = rgb.resize(
                        (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS
                    )
                buf = io.BytesIO()
                rgb.save(buf, "JPEG", quality=90)
                data = buf.getvalue()
            sink.write({"__key__": key, "jpg": data, "json": json.dumps({"uri": path}).encode()})
    return len(paths)


def build_catalog(root: Path, paths: list[str]) -> Catalog:
    rows = []
    for path in paths:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
        rows.append(
            {
                "uri": path,
                "image_id": hashlib.sha256(data).hexdigest(),
                "width": w,
                "height": h,
                "status": "accepted",
            }
        )
    catalog = Catalog(root / "catalog")
    full = [{k: r.get(k) for k in IMAGES_SCHEMA.names} for r in rows]
    upsert_images(catalog, pa.Table.from_pylist(full, schema=IMAGES_SCHEMA), "bench")
    return catalog


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shards.md")
    args = parser.parse_args()
    paths = sorted(str(p) for p in args.images.iterdir() if p.is_file())
    n = len(paths)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        catalog = build_catalog(tmp, paths)
        runs: dict[str, Callable[[int], object]] = {}
        for mode, side in (("copy", None), ("re-encode", args.max_side)):
            runs[f"naive {mode}"] = lambda i, s=side, m=mode: naive(paths, tmp / f"naive-{m}-{i}", s)  # type: ignore[misc]
            for workers in (1, 4):
                runs[f"ours {mode}, {workers} thread(s)"] = lambda i, s=side, w=workers: (
                    create_dataset_version(  # type: ignore[misc]
                        catalog, "bench", shard_max_bytes=SHARD_BYTES, reencode_max_side=s, workers=w
                    )
                )
        for fn in runs.values():  # warm-up: imports, page cache
            fn(-1)
        for i in range(args.repeats):
            for label, fn in runs.items():
                results.setdefault(label, []).append(_time(lambda fn=fn, i=i: fn(i)))  # type: ignore[misc]
    import torch

    lines = [
        "# Dataset-version writing throughput (webdataset shards)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_shards --repeats {args.repeats} --max-side {args.max_side}`  ",
        f"Data: {n} files of `raw-photos/images` (JPEG, widths 68-2400 px), ~100 MB shards.  ",
        f"Machine: nproc={os.cpu_count()}, CPU {_cpu_model()}, torch {torch.__version__}, "
        f"Pillow {Image.__version__}, webdataset {wds.__version__}; best of {args.repeats} alternating runs.",
        "",
        "| writer | seconds | images/s | ratio vs naive (same mode) |",
        "|---|---:|---:|---:|",
    ]
    for label, times in results.items():
        base = min(results[f"naive {label.split(',')[0].split(' ', 1)[1]}"])
        lines.append(f"| {label} | {min(times):.2f} | {n / min(times):.1f} | {base / min(times):.2f}x |")
    lines += [
        "",
        "All runs (s): " + "; ".join(f"{k} {', '.join(f'{t:.2f}' for t in v)}" for k, v in results.items()),
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
