"""Memory and time of the nightly hash-dedup step (``apply_hash_dedup``) as the catalog grows.

Run: ``.venv/bin/python -m benchmarks.bench_dedup_catalog [--sizes 1000000 2000000 4000000]``

For each catalog size N: a synthetic images table (``benchmarks.bench_catalog.synthetic_rows``:
60-character uris, sha256 ids, random pHashes, a folder per night) whose last night (``--new``
rows) holds planted duplicates of the first night's images: ``--planted`` exact copies (same
sha256, smaller) and as many near copies (pHash 1-4 bits away, smaller). Then, each in a fresh
process so peak RSS (``VmHWM``) is that operation's own:

- baseline, same run: reading the columns dedup needs (``read_images`` of uri, image_id, phash,
  width, height, bytes, status, reason, dup_of, dup_of_uri) into Arrow: what holding the
  catalog's dedup input costs, the floor of any in-memory grouping;
- ours: ``apply_hash_dedup`` (read the candidates, exact + pHash groups over ALL of them,
  connected components, keepers, then one commit of the changed rows).

Checks that every planted copy is found. Writes ``benchmarks/results/dedup_catalog.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from benchmarks import common
from benchmarks.bench_catalog import CHUNK, NEW_NIGHT, _night, synthetic_rows
from curation.hashdedup import DEDUP_COLUMNS
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, TABLE

REPO = Path(__file__).resolve().parents[1]


def _flip_bits(phash: str, k: int, rng: random.Random) -> str:
    value = int(phash, 16)
    for bit in rng.sample(range(64), k):
        value ^= 1 << bit
    return f"{value:016x}"


def build(root: Path, size: int, new: int, planted: int) -> None:
    """``size`` rows in nights of CHUNK rows, then tonight's ``new`` rows with ``planted`` exact and
    ``planted`` near copies of night 0's images (setup, not timed)."""
    table_uri = Catalog(str(root)).table_uri(TABLE)
    first = None
    for k, start in enumerate(range(0, size, CHUNK)):
        rows = synthetic_rows(range(start, min(size, start + CHUNK)), "base", _night(k))
        write_deltalake(table_uri, rows, mode="append")
        first = rows if first is None else first
    assert first is not None
    rng = random.Random(size)
    tonight = synthetic_rows(range(size, size + new), "nightly", NEW_NIGHT).to_pylist()
    originals = first.select(["image_id", "phash", "width", "height"]).to_pylist()
    for i, j in enumerate(rng.sample(range(len(originals)), 2 * planted)):
        row, orig = tonight[i], originals[j]
        row.update(width=orig["width"] // 2, height=orig["height"] // 2)  # smaller: the original stays
        if i < planted:
            row.update(image_id=orig["image_id"], phash=orig["phash"])  # same bytes
        else:
            row.update(phash=_flip_bits(orig["phash"], rng.randint(1, 4), rng))  # resized/re-encoded
    write_deltalake(table_uri, pa.Table.from_pylist(tonight, schema=IMAGES_SCHEMA), mode="append")


def child(op: str, root: str) -> None:
    """Runs in its own process: one operation, then prints its wall time and peak RSS as JSON."""
    from curation.config import HashDedupConfig
    from curation.hashdedup import apply_hash_dedup
    from data_catalog.images import read_images

    catalog = Catalog(root)
    t0 = time.perf_counter()
    if op == "read":
        table = read_images(catalog, columns=DEDUP_COLUMNS)
        extra = {"arrow_mb": table.nbytes / 2**20, "rows": table.num_rows}
    elif op == "dedup":
        extra = apply_hash_dedup(catalog, HashDedupConfig(), "dedup")
    else:
        raise ValueError(op)
    print(json.dumps({"s": time.perf_counter() - t0, "peak_mb": common.peak_mb(), **extra}))


def run_child(op: str, root: Path) -> dict:
    return common.run_child("benchmarks.bench_dedup_catalog", op, str(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000])
    parser.add_argument("--new", type=int, default=20_000, help="tonight's rows")
    parser.add_argument(
        "--planted", type=int, default=200, help="exact copies planted tonight (and as many near)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dedup_catalog.md")
    parser.add_argument("--child", nargs=2, metavar=("OP", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    lines = [
        "# Hash dedup over the whole catalog: peak memory and time vs catalog size",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_dedup_catalog --sizes {' '.join(map(str, args.sizes))}`  ",
        f"Machine: {common.machine()}; pyarrow {pa.__version__}. Each operation in a fresh process; peak RSS "
        "is that process's maximum (an interpreter with dinoflow imported starts at about 120-150 MB). "
        f"Tonight: {args.new:,} new rows with {args.planted} exact and {args.planted} near copies "
        "(pHash 1-4 bits away) of older images; radius 6 (the default).",
        "",
        "| catalog rows | dedup columns in Arrow | read them: peak RSS, s | `apply_hash_dedup`: peak RSS, s "
        "| candidates | exact / near duplicates | rows committed |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    got = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="dinoflow-bench-dedup-") as tmp:
            root = Path(tmp) / "catalog"
            build(root, size, args.new, args.planted)
            read = run_child("read", root)
            dedup = run_child("dedup", root)
        total = size + args.new
        assert read["rows"] == dedup["candidates"] == total, (read, dedup)
        # every planted copy is found (random pHashes may add a few chance near pairs at this scale)
        assert dedup["exact_duplicate"] == args.planted, dedup
        assert dedup["near_duplicate_phash"] >= args.planted, dedup
        got.append((total, read["peak_mb"], dedup["peak_mb"]))
        lines.append(
            f"| {total:,} | {read['arrow_mb']:.0f} MB | {read['peak_mb']:.0f} MB, {read['s']:.1f} s | "
            f"**{dedup['peak_mb']:.0f} MB**, {dedup['seconds']:.1f} s | {dedup['candidates']:,} | "
            f"{dedup['exact_duplicate']} / {dedup['near_duplicate_phash']} | {dedup['changed']} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    lines.append("")
    if len(got) > 1:
        (n0, r0, d0), (n1, r1, d1) = got[0], got[-1]
        lines.append(
            f"Growth per catalog row from {n0:,} to {n1:,} rows: reading the dedup columns "
            f"{2**20 * (r1 - r0) / (n1 - n0):.0f} B, `apply_hash_dedup` {2**20 * (d1 - d0) / (n1 - n0):.0f} B."
        )
        lines.append("")
    common.write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
