"""Measure pHash near-duplicate precision/recall per Hamming radius, to choose ``phash_radius``.

Hashes are computed exactly as the pipeline does (``curation.decode.decode_record``: the encoded
bytes, DCT-draft JPEG decoding, EXIF orientation, 128 px thumbnail, ``imagehash.phash``).

* Generated variants: every photo of ``raw-photos/images`` under edits a copy-maker applies
  (resize, JPEG re-compression, small crops, brightness/contrast, blur, a watermark, grayscale;
  flips and rotations reported apart: pHash is not invariant to them). Positives: (original,
  variant); negatives: all pairs of distinct originals.
* ``imagededup-testdata``: file names ``ukbenchNNNNN[_variant]`` give the ground truth (same
  NNNNN = same scene); every other file is its own scene.
* Imagenette (2,000 photos, 1,999,000 pairs of distinct photos): a larger negative set for the
  false-positive rate (ImageNet holds a few real near-duplicates, so it is an upper bound).

    .venv/bin/python -m benchmarks.measure_phash_radius [--photos 500] [--no-imagenette]

Prints markdown tables and writes ``benchmarks/results/phash_radius.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from benchmarks.common import write_result
from curation.binary_index import hamming, hex_to_uint64
from curation.config import DEFAULT_MAX_PIXELS, FilterConfig, IngestConfig
from curation.decode import decode_record
from curation.filters import apply_filters
from evaluation.copy_detection import crop_fraction, encode_jpeg, overlay_text, scale, ukbench_scene

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "phash_radius.md"
RADII = range(17)


def shared_data_dir() -> Path:
    return Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


# ----------------------------------------------------------------------------- variants
# the edit functions are shared with the copy-detection measurement (evaluation/copy_detection.py)
# name -> (edit of the decoded original, JPEG quality the copy is saved with)
VARIANTS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    "resize_50": (lambda im: scale(im, 0.5), 95),
    "resize_25": (lambda im: scale(im, 0.25), 95),
    "upscale_150": (lambda im: scale(im, 1.5), 95),
    "jpeg_q90": (lambda im: im, 90),
    "jpeg_q60": (lambda im: im, 60),
    "jpeg_q30": (lambda im: im, 30),
    "crop_5": (lambda im: crop_fraction(im, 0.05), 95),
    "crop_10": (lambda im: crop_fraction(im, 0.10), 95),
    "crop_10_corner": (lambda im: crop_fraction(im, 0.10, centre=False), 95),
    "brightness_+30": (lambda im: ImageEnhance.Brightness(im).enhance(1.3), 95),
    "contrast_-30": (lambda im: ImageEnhance.Contrast(im).enhance(0.7), 95),
    "blur_2px": (lambda im: im.filter(ImageFilter.GaussianBlur(2)), 95),
    "watermark": (overlay_text, 95),
    "grayscale": (lambda im: im.convert("L"), 95),
    "hflip": (lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 95),
    "rot90": (lambda im: im.transpose(Image.Transpose.ROTATE_90), 95),
}
GEOMETRIC = ("hflip", "rot90")  # pHash is not invariant to these: left to the embedding dedup


def variant_bytes(img: Image.Image, name: str) -> bytes:
    """The variant ``name`` of a decoded RGB/L image, encoded as a JPEG copy-maker would save it."""
    edit, quality = VARIANTS[name]
    return encode_jpeg(edit(img), quality)


def pipeline_phash(data: bytes, uri: str = "memory://x.jpg") -> str | None:
    """The pHash the ingest stage stores for these bytes; None when ingest rejects them (decode
    failure or a default quality filter), since rejected rows never reach the dedup."""
    record = decode_record(uri, data, DEFAULT_MAX_PIXELS, IngestConfig().thumbnail_size)
    if record.reason is not None or apply_filters(record, FilterConfig()) is not None:
        return None
    return record.phash


def hash_photo_variants(paths: list[Path], names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """pHashes of the originals (n,) and of every variant {name: (n,)}, all uint64."""
    originals, variants = [], {name: [] for name in names}
    for path in paths:
        data = path.read_bytes()
        originals.append(pipeline_phash(data, str(path)))
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        img = img if img.mode in ("RGB", "L") else img.convert("RGB")
        for name in names:
            variants[name].append(pipeline_phash(variant_bytes(img, name)))
    return _masked(originals), {name: _masked(v) for name, v in variants.items()}


def _masked(hexes: list[str | None]) -> np.ma.MaskedArray:
    """uint64 pHashes, masked where ingest rejected the image."""
    values, valid = hex_to_uint64(hexes)
    return np.ma.MaskedArray(values, mask=~valid)


def pair_distances(a: np.ma.MaskedArray, b: np.ma.MaskedArray) -> np.ndarray:
    """Distances of the pairs (a[i], b[i]) where both were accepted by ingest."""
    keep = ~(np.ma.getmaskarray(a) | np.ma.getmaskarray(b))
    return hamming(a.data[keep], b.data[keep])


# ----------------------------------------------------------------------------- metrics
def distinct_pair_distances(h: np.ndarray) -> np.ndarray:
    """Hamming distances of all pairs i < j of ``h`` (n*(n-1)/2,), as int8 (computed in row blocks)."""
    h = np.ma.compressed(h) if isinstance(h, np.ma.MaskedArray) else h
    parts = []
    for i in range(len(h) - 1):
        parts.append(hamming(h[i], h[i + 1 :]).astype(np.int8))
    return np.concatenate(parts) if parts else np.empty(0, np.int8)


def negative_counts(neg: np.ndarray) -> np.ndarray:
    """Cumulative count of negative pairs at distance <= r, for r in RADII."""
    hist = np.bincount(neg.astype(np.int64), minlength=65)
    return np.cumsum(hist)[: len(RADII)]


def prf(tp: int, fn: int, fp: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def radius_table(pos: np.ndarray, neg_cum: np.ndarray, n_neg: int, title: str) -> str:
    """Markdown: per radius, TP/FN/FP, precision, recall, F1 and the false-positive rate per pair."""
    lines = [
        f"#### {title}",
        "",
        f"{len(pos)} positive pairs, {n_neg} negative pairs",
        "",
        "| radius | TP | FN | FP | precision | recall | F1 | FP rate / pair |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in RADII:
        tp = int((pos <= r).sum())
        fp = int(neg_cum[r])
        p, rec, f1 = prf(tp, len(pos) - tp, fp)
        lines.append(
            f"| {r} | {tp} | {len(pos) - tp} | {fp} | {p:.4f} | {rec:.4f} | {f1:.4f} | {fp / max(n_neg, 1):.2e} |"
        )
    return "\n".join(lines)


def recall_by_variant_table(orig: np.ndarray, variants: dict[str, np.ndarray]) -> str:
    """Markdown: rows = radius, columns = variant, cells = recall of (original, variant) pairs."""
    names = list(variants)
    dist = {name: pair_distances(orig, v) for name, v in variants.items()}
    head = "| radius | " + " | ".join(names) + " |"
    lines = ["#### Recall per variant (original vs. variant)", "", head, "|---:|" + "---:|" * len(names)]
    for r in RADII:
        lines.append(f"| {r} | " + " | ".join(f"{(dist[n] <= r).mean():.3f}" for n in names) + " |")
    med = " | ".join(f"{np.median(dist[n]):.0f}" for n in names)
    lines.append(f"| median distance | {med} |")
    pairs = " | ".join(str(len(dist[n])) for n in names)
    lines.append(f"| pairs (both accepted by ingest) | {pairs} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data sets
def ukbench_hashes(root: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(relative paths, scene labels, pHashes) of the decodable images of imagededup-testdata."""
    rels, scenes, hashes = [], [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "LICENSE"):
        phash = pipeline_phash(path.read_bytes(), str(path))
        if phash is None:
            continue
        rel = str(path.relative_to(root))
        rels.append(rel)
        scenes.append(ukbench_scene(rel))
        hashes.append(phash)
    return rels, scenes, hex_to_uint64(hashes)[0]  # rejected files were skipped above


def ukbench_section(root: Path) -> str:
    """Radius table for the photometric/format variants; flips and rotations listed apart."""
    rels, scenes, h = ukbench_hashes(root)
    i, j = np.triu_indices(len(h), k=1)
    dist = hamming(h[i], h[j])
    same = np.array(scenes)[i] == np.array(scenes)[j]
    geometric = np.array(
        [any(g in rels[a] + rels[b] for g in ("_hflip", "_rotation")) for a, b in zip(i, j, strict=True)]
    )
    neg = dist[~same]
    title = "imagededup-testdata (UKBench): copies, resizes, grayscale, other formats, alpha"
    table = radius_table(dist[same & ~geometric], negative_counts(neg), int((~same).sum()), title)
    lines = ["", "| positive pair | distance |", "|---|---:|"]
    for a, b, d in sorted(zip(i[same], j[same], dist[same], strict=True), key=lambda t: (t[2], rels[t[0]])):
        lines.append(f"| {rels[a]} ~ {rels[b]} | {d} |")
    lines.append("")
    geo = dist[same & geometric]
    lines.append(
        f"Pairs involving a flipped or rotated copy: {len(geo)}, distances {int(geo.min())}..{int(geo.max())}."
    )
    lines.append(f"Smallest distance between different scenes: {int(neg.min())}")
    return table + "\n" + "\n".join(lines)


def imagenette_hashes(archive: Path) -> np.ndarray:
    hashes = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpeg", ".jpg", ".png")):
                f = tar.extractfile(member)
                assert f is not None
                phash = pipeline_phash(f.read(), member.name)
                if phash is not None:
                    hashes.append(phash)
    return hex_to_uint64(hashes)[0]


def tail_rates(neg: np.ndarray, fit_from: int = 5) -> np.ndarray:
    """Rate per pair of distance <= r (r in RADII) with the sparse lower tail extrapolated.

    pHash distances are even (the median threshold sets 32 of 64 bits), so the fit is a line
    through log(count at d) for the first ``fit_from`` even distances holding >= 5 pairs;
    below them the fitted counts are used. (A model, not a measurement: see the doc.)"""
    hist = np.bincount(neg.astype(np.int64), minlength=65).astype(float)
    even = np.arange(0, 65, 2)
    dense = even[hist[even] >= 5][:fit_from]
    slope, icept = np.polyfit(dense, np.log(hist[dense]), 1)
    model = hist.copy()
    low = even[even < dense[0]]
    model[low] = np.exp(icept + slope * low)
    return np.cumsum(model)[: len(RADII)] / len(neg)


def imagenette_section(archive: Path) -> str:
    inet = imagenette_hashes(archive)
    neg = distinct_pair_distances(inet)
    counts, rates = negative_counts(neg), tail_rates(neg)
    lines = [
        f"## Imagenette negatives ({len(inet)} photos, {len(neg)} pairs of distinct files)\n",
        "Measured pairs within each radius, and the rate with the lower tail extrapolated (log-linear",
        "fit over the first even distances holding >= 5 pairs); the last columns scale that rate to the",
        "false pairs expected among N images (rate * N^2 / 2): they grow with the square of the pool.\n",
        "| radius | measured pairs | measured rate | model rate | false pairs @ 100k | @ 1M | @ 10M |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in RADII:
        scaled = " | ".join(f"{rates[r] * n * n / 2:.3g}" for n in (1e5, 1e6, 1e7))
        lines.append(f"| {r} | {int(counts[r])} | {counts[r] / len(neg):.2e} | {rates[r]:.2e} | {scaled} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=500, help="how many raw photos (sorted by name)")
    parser.add_argument("--no-imagenette", action="store_true", help="skip the 2,000-photo negative set")
    args = parser.parse_args()
    data = shared_data_dir()
    t0 = time.perf_counter()
    paths = sorted((data / "raw-photos" / "images").iterdir())[: args.photos]
    names = list(VARIANTS)
    orig, variants = hash_photo_variants(paths, names)
    neg = distinct_pair_distances(orig)
    neg_cum = negative_counts(neg)
    photometric = [n for n in names if n not in GEOMETRIC]
    pos = np.concatenate([pair_distances(orig, variants[n]) for n in photometric])
    geo = np.concatenate([pair_distances(orig, variants[n]) for n in GEOMETRIC])
    sections = [
        f"# pHash radius measurement\n\nCommand: `.venv/bin/python -m benchmarks.measure_phash_radius "
        f"--photos {args.photos}{' --no-imagenette' if args.no_imagenette else ''}`\n",
        f"## Generated variants of {len(paths)} raw photos\n",
        radius_table(pos, neg_cum, len(neg), f"All photometric variants ({', '.join(photometric)})"),
        radius_table(geo, neg_cum, len(neg), "Geometric variants (hflip, rot90): pHash is not invariant"),
        recall_by_variant_table(orig, variants),
        "## imagededup-testdata\n",
        ukbench_section(data / "imagededup-testdata"),
    ]
    if not args.no_imagenette:
        sections.append(imagenette_section(data / "imagenette-train-subset.tar.gz"))
    sections.append(f"\n_{time.perf_counter() - t0:.0f} s_")
    write_result(RESULTS, "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
