"""The ``images`` table: one row per input file ever seen, keyed by ``uri``.

Every input ends in exactly one ``status`` with a machine-readable ``reason`` (null only when
accepted), so ``accepted + rejected + duplicate == inputs`` always holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "images"


class Status(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class Reason(StrEnum):
    """The fixed vocabulary of ``reason`` values (documented in README.md)."""

    READ_ERROR = "read_error"  # the file could not be read from its source (I/O, permissions, missing)
    EMPTY_FILE = "empty_file"  # zero bytes
    NOT_AN_IMAGE = "not_an_image"  # bytes are not a known image format (text, pdf, svg, ...)
    DECODE_ERROR = "decode_error"  # looks like an image but decoding failed (corrupt, truncated)
    TOO_MANY_PIXELS = "too_many_pixels"  # header declares more pixels than the cap (decompression bomb)
    TOO_SMALL = "too_small"  # shorter side below min_side
    ASPECT_RATIO = "aspect_ratio"  # long side / short side above max_aspect_ratio
    LOW_INFORMATION = "low_information"  # near-uniform image (blank, single colour)
    TOO_BLURRY = "too_blurry"  # optional: Laplacian variance below threshold
    TOO_DARK = "too_dark"  # optional: mean luma below threshold
    EXACT_DUPLICATE = "exact_duplicate"  # same bytes (same image_id) as the kept image
    NEAR_DUPLICATE_PHASH = "near_duplicate_phash"  # pHash within the Hamming radius of the kept image
    NEAR_DUPLICATE_EMBEDDING = "near_duplicate_embedding"  # copy-descriptor cosine above the threshold
    EVAL_LEAK = "eval_leak"  # a copy or edited copy of an evaluation image (benchmark named in detail)


REJECT_REASONS = frozenset(
    {
        Reason.READ_ERROR,
        Reason.EMPTY_FILE,
        Reason.NOT_AN_IMAGE,
        Reason.DECODE_ERROR,
        Reason.TOO_MANY_PIXELS,
        Reason.TOO_SMALL,
        Reason.ASPECT_RATIO,
        Reason.LOW_INFORMATION,
        Reason.TOO_BLURRY,
        Reason.TOO_DARK,
        Reason.EVAL_LEAK,
    }
)
DUPLICATE_REASONS = frozenset(
    {Reason.EXACT_DUPLICATE, Reason.NEAR_DUPLICATE_PHASH, Reason.NEAR_DUPLICATE_EMBEDDING}
)

_TS = pa.timestamp("us", tz="UTC")

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),  # the key: where the file was found
        pa.field("image_id", pa.string()),  # sha256 of the file bytes, hex; null if unreadable
        pa.field("source", pa.string()),  # the source spec the file came from
        pa.field("bytes", pa.int64()),  # file size
        pa.field("width", pa.int32()),  # pixels after EXIF orientation; null if undecodable
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),  # PIL format name (JPEG, PNG, ...), null if unknown
        pa.field("mode", pa.string()),  # PIL mode of the file (RGB, L, CMYK, I;16, P, ...)
        pa.field("phash", pa.string()),  # 64-bit perceptual hash, 16 hex digits
        pa.field("mean_luma", pa.float32()),  # 0..255, on the decoded thumbnail
        pa.field("luma_std", pa.float32()),  # 0..255, low-information measure
        pa.field("sharpness", pa.float32()),  # variance of the Laplacian on the thumbnail
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),  # human-readable detail of a rejection (exception text)
        pa.field("dup_of", pa.string()),  # image_id of the kept image, for duplicates
        pa.field("dup_of_uri", pa.string()),  # uri of the kept image, for duplicates
        pa.field("first_run_id", pa.string()),  # the run that first saw this file
        pa.field("run_id", pa.string()),  # the run that last changed this row
        pa.field("ingested_at", _TS),
        pa.field("updated_at", _TS),
    ]
)


def read_images(
    catalog: Catalog,
    version: int | None = None,
    columns: list[str] | None = None,
    where: pc.Expression | None = None,
) -> pa.Table:
    """The images table (or a ``version`` of it); ``where`` filters rows while scanning."""
    return catalog.read(TABLE, IMAGES_SCHEMA, version=version, columns=columns, where=where)


def known_uris(catalog: Catalog) -> set[str]:
    """URIs already in the catalog: an incremental run skips them without reading a byte."""
    return set(read_images(catalog, columns=["uri"]).column("uri").to_pylist())


def upsert_images(catalog: Catalog, rows: pa.Table, run_id: str) -> int:
    """Insert new rows / replace rows with the same uri, atomically. Returns the table version."""
    if len(set(rows.column("uri").to_pylist())) != rows.num_rows:
        raise ValueError("upsert_images: duplicate uri in one write")
    return catalog.upsert(TABLE, rows, IMAGES_SCHEMA, key="uri", metadata={"run_id": run_id})


_uri_hash = hash  # 64-bit, per process: enough to find the few uris worth comparing exactly


def create_images(catalog: Catalog, batches: Callable[[], Iterator[pa.RecordBatch]], run_id: str) -> int:
    """Create the images table from a stream of rows (a first, bulk ingest), holding about one
    batch in memory; raises ``FileExistsError`` if the table exists. Returns version 0.

    ``batches`` returns a fresh iterator over the same rows each call: uris are checked unique on
    the way through (a 64-bit hash per row); only if two hashes collide does a second pass compare
    those uris exactly. A duplicate uri raises ``ValueError`` and nothing is committed.
    """

    def checked() -> Iterator[pa.RecordBatch]:
        hashes = []
        for batch in batches():
            uris = batch.column(batch.schema.get_field_index("uri")).to_pylist()
            hashes.append(np.fromiter(map(_uri_hash, uris), dtype=np.int64, count=len(uris)))
            yield batch
        seen = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, np.int64)
        clashes = set(seen[1:][seen[1:] == seen[:-1]].tolist())
        if clashes:  # a real duplicate, or (rarely) two uris with one hash: compare the strings
            names: set[str] = set()
            for batch in batches():
                for uri in batch.column(batch.schema.get_field_index("uri")).to_pylist():
                    if _uri_hash(uri) in clashes:
                        if uri in names:
                            raise ValueError(f"create_images: duplicate uri in one write: {uri!r}")
                        names.add(uri)

    return catalog.create(TABLE, checked(), IMAGES_SCHEMA, metadata={"run_id": run_id})


def update_images(catalog: Catalog, rows: pa.Table, run_id: str) -> int:
    """Set ``rows``' columns (``uri`` plus some images columns) on the rows with those uris,
    atomically; other columns stay as they are. Returns the table version."""
    if len(set(rows.column("uri").to_pylist())) != rows.num_rows:
        raise ValueError("update_images: duplicate uri in one write")
    return catalog.update(TABLE, rows, IMAGES_SCHEMA, key="uri", metadata={"run_id": run_id})


def status_counts(catalog: Catalog, version: int | None = None) -> list[dict[str, object]]:
    """Counts per (status, reason), sorted: the summary every stage reports."""
    table = read_images(catalog, version=version, columns=["status", "reason"])
    if table.num_rows == 0:
        return []
    grouped = table.group_by(["status", "reason"], use_threads=False).aggregate([("status", "count")])
    rows = [
        {"status": s, "reason": r, "count": c}
        for s, r, c in zip(
            grouped.column("status").to_pylist(),
            grouped.column("reason").to_pylist(),
            grouped.column("status_count").to_pylist(),
            strict=True,
        )
    ]
    return sorted(rows, key=lambda row: (str(row["status"]), str(row["reason"] or "")))


def accepted(catalog: Catalog, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
    """The accepted rows (``columns`` of them in that order, all columns when None), in ONE scan that
    filters batch by batch: memory holds only the accepted rows of ``columns`` plus ``status``."""
    wanted = None if columns is None else list(dict.fromkeys([*columns, "status"]))
    table = read_images(
        catalog, version=version, columns=wanted, where=pc.field("status") == Status.ACCEPTED.value
    )
    return table if columns is None else table.select(columns)
