"""Ingest + filter + hash throughput per core: ``curation.ingest.process_partition`` vs a naive loop.

Run: ``.venv/bin/python -m benchmarks.bench_ingest [--repeats 3] [--images DIR]``

Both run in this ONE process (one core) over the same files (500 raw photos, widths 68-2400 px):

- naive: read bytes, sha256, full PIL decode + ``convert("RGB")``, ``imagehash.phash(full image)``,
  luma mean/std on the full grayscale image;
- ours: ``process_partition`` (read, sha256, header checks, JPEG DCT draft decode to a 128 px
  thumbnail, pHash + luma + Laplacian sharpness on it, quality filters, Arrow rows);
- ours with ``thumbnail_size`` 32 (the fastest setting, not the default: it loses dedup recall);
- stage-only rows (not pipelines): read + open + the draft decode ours does, the same at libjpeg's
  smallest scale (1/8), and the floor: read + sha256 + open + 1/8 decode, the least work of any
  pipeline that must return the sha256 and look at the pixels, so its speed-up is the ceiling.

Each is timed ``--repeats`` times, alternating, after a warm-up; the best CPU time counts (the
machine is shared). Also timed on the photos with short side >= 512 px, where DCT draft decoding
skips the most work. Writes ``benchmarks/results/ingest.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from benchmarks.common import write_result
from curation.config import CurateConfig
from curation.ingest import process_partition

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = (
    Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "raw-photos" / "images"
)


def naive(paths: list[str], luma: bool = True) -> int:
    """The obvious loop: full decode of every image, pHash of the full image (+ luma mean/std)."""
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        str(imagehash.phash(rgb))
        if luma:
            gray = np.asarray(rgb.convert("L"), dtype=np.float32)
            float(gray.mean()), float(gray.std())
    return len(paths)


def naive_as_briefed(paths: list[str]) -> int:
    return naive(paths, luma=False)


def decode_only(paths: list[str], size: int = CurateConfig().ingest.thumbnail_size) -> int:
    """Stage, not a pipeline: read + open + the JPEG draft decode ``process_partition`` does (luma,
    smallest DCT scale with short side >= ``size``), nothing else. The floor for ours."""
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            img.draft("L", (size, size))
            img.load()
    return len(paths)


def decode_only_dc(paths: list[str]) -> int:
    """Stage: as ``decode_only`` at the smallest scale libjpeg has (1/8, DC only): still decodes
    every Huffman-coded coefficient, so this is the floor of ANY libjpeg-based pipeline."""
    return decode_only(paths, size=1)


def ours(paths: list[str]) -> int:
    table = process_partition(paths, "bench", CurateConfig(), "bench")
    return table.num_rows


def ours_32px(paths: list[str]) -> int:
    """Ours with ``ingest.thumbnail_size`` 32: libjpeg's 1/8 scale for nearly every photo (and a
    32 px thumbnail for the metrics). Faster, but it loses near-duplicate recall (see the notes)."""
    cfg = CurateConfig.model_validate({"ingest": {"thumbnail_size": 32}})
    return process_partition(paths, "bench", cfg, "bench").num_rows


def floor_1_8(paths: list[str]) -> int:
    """Stage: read + sha256 + open + 1/8-scale decode. The least work of ANY pipeline that must
    return the sha256 ``image_id`` and look at the pixels (with libjpeg): no pHash, no metrics, no
    rows. Its speed-up is the ceiling no change to the rest of ours can pass."""
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            img.draft("L", (1, 1))
            img.load()
    return len(paths)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time(fn, paths: list[str]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(CPU seconds of this process, wall seconds) of one run."""
    cpu, wall = time.process_time(), time.perf_counter()
    assert fn(paths) == len(paths)
    return time.process_time() - cpu, time.perf_counter() - wall


NAIVE = "naive (as briefed): full decode + RGB + imagehash.phash(full) + sha256"
OURS = "ours: `process_partition` (draft luma thumbnail, pHash, luma, sharpness, filters, Arrow rows)"
OURS_32 = "ours with `thumbnail_size` 32 (1/8-scale decode for most photos; loses dedup recall)"
DECODE = "stage only: read + open + draft decode as ours does (no hashes, metrics, rows)"
DECODE_DC = "stage only: read + open + 1/8-scale (DC-only) decode"
FLOOR = "floor: read + sha256 + open + 1/8-scale decode (nothing else): the ceiling of any libjpeg pipeline"
PIPELINES = {
    NAIVE: naive_as_briefed,
    "naive + luma mean/std on the full image (same outputs as ours)": naive,
    OURS: ours,
    OURS_32: ours_32px,
    DECODE: decode_only,
    DECODE_DC: decode_only_dc,
    FLOOR: floor_1_8,
}


def _measure(paths: list[str], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (CPU, wall) per pipeline over ``repeats`` alternating rounds."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):  # alternate so load from other processes hits all alike
        for name, fn in PIPELINES.items():
            cpu, wall = _time(fn, paths)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], cpu), min(old[1], wall))
    return best


def _table(title: str, n: int, best: dict[str, tuple[float, float]]) -> list[str]:
    base_cpu = best[next(iter(PIPELINES))][0]
    lines = [
        f"### {title} ({n} images)",
        "",
        "| pipeline | CPU s | images/s per core (CPU) | wall s | speed-up vs naive (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (cpu, wall) in best.items():
        lines.append(f"| {name} | {cpu:.2f} | {n / cpu:.0f} | {wall:.2f} | {base_cpu / cpu:.2f}x |")
    return [*lines, ""]


def _why_not_more(best: dict[str, tuple[float, float]], n: int) -> list[str]:
    """Per-image CPU ms of each stage (from this run) and the decode-bound ceiling of the speed-up."""
    ms = {name: 1e3 * cpu / n for name, (cpu, _) in best.items()}
    naive_ms, ours_ms, dec_ms, floor_ms = ms[NAIVE], ms[OURS], ms[DECODE], ms[FLOOR]
    return [
        "Where ours spends its time (CPU ms per image, all raw photos, this run): "
        f"naive {naive_ms:.2f}; ours {ours_ms:.2f} = read + open + draft decode {dec_ms:.2f} + the rest "
        f"(sha256, EXIF, thumbnail resize, pHash, luma, sharpness, filters, Arrow rows) {ours_ms - dec_ms:.2f}. "
        f"2.5x the naive loop would need <= {naive_ms / 2.5:.2f} ms per image in all. The floor row "
        f"(read + sha256 + open + libjpeg's smallest, 1/8 DC-only scale, and nothing else) already costs "
        f"{floor_ms:.2f} ms, because libjpeg must Huffman-decode every coefficient of every block at any "
        f"scale: no pipeline that hashes the bytes and decodes with libjpeg passes "
        f"{naive_ms / floor_ms:.2f}x, "
        + (
            f"and only {naive_ms / 2.5 - floor_ms:.2f} ms per image would be left for the pHash, the "
            "quality metrics and the catalog row. "
            if naive_ms / 2.5 > floor_ms
            else "so 2.5x is out of reach before the pHash, the quality metrics or the catalog row. "
        )
        + "The larger the photos, the larger the gain (table 2).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest.md")
    args = parser.parse_args()
    paths = sorted(str(p) for p in args.images.iterdir() if p.is_file())
    large = [p for p in paths if min(Image.open(p).size) >= 512]
    ours(paths[:20]), naive(paths[:20])  # warm-up: imports, scipy, page cache
    best_all = _measure(paths, args.repeats)
    import torch

    lines = [
        "# Ingest throughput per core (decode + filter + hashes)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_ingest --repeats {args.repeats}`  ",
        "Data: `raw-photos/images` (JPEG, widths 68-2400 px, median short side 367 px); one process.  ",
        f"Machine: nproc={os.cpu_count()}, CPU {_cpu_model()}, torch {torch.__version__}, "
        f"Pillow {Image.__version__}, imagehash {imagehash.__version__}. Best of {args.repeats} "
        "alternating rounds; CPU time of this process is the per-core measure (the machine is shared).",
        "",
        *_table("All raw photos", len(paths), best_all),
        *_table("Raw photos with short side >= 512 px", len(large), _measure(large, args.repeats)),
        *_why_not_more(best_all, len(paths)),
        "Not kept: `thumbnail_size` 32 (row 4) is faster but still short of 2.5x, and it costs dedup "
        "quality (measured 2026-11-23): at radius 6, recall on resize 50/25/150% falls from "
        "1.000/1.000/1.000 to 0.996/0.996/0.998 and draft-vs-full pHash differs by up to 12 bits (4 at "
        "128 px). 128 px stays the default. "
        "A different decoder does not change the picture: Pillow already uses libjpeg-turbo 3.2; "
        "simplejpeg 1.9 (same library, no Python-side reads) decodes grayscale at our scale in 0.78 ms "
        "and at 1/8 in 0.72 ms per image vs Pillow's 0.85 ms (open + decode, measured 2026-11-23), "
        "about 0.07 ms saved.",
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
