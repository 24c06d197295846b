"""Exact (same bytes) and perceptual (pHash) duplicate groups over the accepted images.

Two accepted rows are linked when they have the same ``image_id`` (sha256 of the bytes: an
exact duplicate) or when their 64-bit pHashes are within ``radius`` bits (Hamming distance, see
``curation.binary_index``). Groups are the connected components of these links, so a chain
``a ~ b ~ c`` is one group even when ``a`` and ``c`` are further apart than ``radius``. Every group
keeps ONE member, the highest resolution (width * height), then the larger file, then the
smallest uri; every other member becomes ``duplicate`` pointing at the keeper (``dup_of`` =
keeper's image_id, ``dup_of_uri`` = keeper's uri), with reason ``exact_duplicate`` when it has the
keeper's bytes and ``near_duplicate_phash`` otherwise.

Statuses are a function of the catalog: ``apply_hash_dedup`` recomputes the groups over every
accepted or hash-duplicate row on each run (from the stored columns, no decoding), so a later run
that brings a higher-resolution copy moves the keeper, and a duplicate whose keeper is gone goes
back to accepted. Only rows whose status/reason/dup_of change are written, in one Delta commit.
Rows the semantic stage marked ``near_duplicate_embedding`` (``curation.neardup``) are grouped too,
so the hash groups do not change when that stage removes a hash keeper, but keep their status
unless they become hash duplicates.

An optional ``confirm`` function decides every pHash link between different files before it
groups (``curation.phash_confirm``: on images under 64 px, pHash at radius 6 links distinct photos,
so ``curation.neardup.phash_confirmer`` asks the copy-descriptor vectors there).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.binary_index import distinct_near_pairs, hex_to_uint64
from curation.config import HashDedupConfig
from curation.phash_confirm import PairConfirm, candidate_row_pairs
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, Reason, Status, read_images, update_images

EXACT = Reason.EXACT_DUPLICATE.value
NEAR = Reason.NEAR_DUPLICATE_PHASH.value
HASH_REASONS = sorted(
    r.value for r in (Reason.EXACT_DUPLICATE, Reason.NEAR_DUPLICATE_PHASH)
)  # what this step decides
EMBEDDING = Reason.NEAR_DUPLICATE_EMBEDDING.value  # decided by curation.neardup; members here
MEMBER_REASONS = [*HASH_REASONS, EMBEDDING]  # duplicates that take part in the grouping
DEDUP_COLUMNS = [  # what dedup reads of the images table
    "uri",
    "image_id",
    "phash",
    "width",
    "height",
    "bytes",
    "status",
    "reason",
    "dup_of",
    "dup_of_uri",
]


@dataclass(frozen=True)
class DuplicateGroups:
    """Per input row: ``keeper`` (n,) int64 row index of its group's kept row (itself when kept),
    ``reason`` (n,) object (None when kept, else ``exact_duplicate`` / ``near_duplicate_phash``).
    ``n_near_pairs``: pHash links (pairs of distinct pHash values within the radius; with a
    confirm function, confirmed pairs of different files); ``n_unconfirmed``: links it refused."""

    keeper: np.ndarray
    reason: np.ndarray
    n_near_pairs: int
    n_unconfirmed: int = 0

    @property
    def is_duplicate(self) -> np.ndarray:
        return self.keeper != np.arange(len(self.keeper))

    @property
    def n_groups(self) -> int:
        """Groups with more than one member."""
        return int(len(np.unique(self.keeper[self.is_duplicate])))


def _codes(values: np.ndarray) -> np.ndarray:
    """Equal-value codes (n,) int64 for an object array of str|None; -1 for None."""
    codes = np.full(len(values), -1, dtype=np.int64)
    valid = np.array([v is not None for v in values], dtype=bool)
    if valid.any():
        codes[valid] = np.unique(values[valid].astype(str), return_inverse=True)[1].ravel()
    return codes


def star_edges(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Link every row with a code >= 0 to the first row of its code (rows that share no code get
    no edge: they are their own component anyway, and the graph stays as small as the duplicates).

    Returns (src, dst, first_row_of_code) where first_row_of_code[c] is that row for code c."""
    rows = np.flatnonzero(codes >= 0)
    if rows.size == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    order = np.argsort(codes[rows], kind="stable")  # stable: the first row of a code is its lowest
    sorted_rows = rows[order]
    del rows, order
    sorted_codes = codes[sorted_rows]
    starts = np.empty(len(sorted_rows), dtype=bool)
    starts[0] = True
    np.not_equal(sorted_codes[1:], sorted_codes[:-1], out=starts[1:])
    first_rows = np.full(int(sorted_codes[-1]) + 1, -1, dtype=np.int64)
    first_rows[sorted_codes[starts]] = sorted_rows[starts]
    repeat = ~starts
    return sorted_rows[repeat], first_rows[sorted_codes[repeat]], first_rows


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component label (n,) int64 of an undirected graph given by edge lists (union-find
    semantics; scipy's linear-time traversal)."""
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def keepers(labels: np.ndarray, pixels: np.ndarray, nbytes: np.ndarray, uris: Any) -> np.ndarray:
    """Kept row per row: max pixels, then max bytes, then min uri (code-point order) per component."""
    n = len(labels)
    keeper = np.arange(n, dtype=np.int64)
    sizes = np.bincount(labels, minlength=int(labels.max(initial=0)) + 1)
    multi = np.flatnonzero(sizes[labels] > 1)
    if multi.size == 0:
        return keeper
    sub_uris = np.array(_take_str(uris, multi), dtype=object)
    uniq, uri_rank = np.unique(sub_uris.astype(str), return_inverse=True)
    if len(uniq) != len(multi):
        raise ValueError("find_duplicate_groups: uris must be unique (they break ties)")
    order = np.lexsort((uri_rank.ravel(), -nbytes[multi], -pixels[multi], labels[multi]))
    sorted_rows, sorted_labels = multi[order], labels[multi][order]
    starts = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    first_of_label = np.empty(len(sizes), dtype=np.int64)
    first_of_label[sorted_labels[starts]] = sorted_rows[starts]
    keeper[multi] = first_of_label[labels[multi]]
    return keeper


def _take_str(values: Any, idx: np.ndarray) -> list[str]:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.take(pa.array(idx)).to_pylist()
    return [str(v) for v in np.asarray(values, dtype=object)[idx]]


def group_duplicates(
    id_codes: np.ndarray,
    hashes: np.ndarray,
    hash_valid: np.ndarray,
    pixels: np.ndarray,
    nbytes: np.ndarray,
    uris: Any,
    radius: int,
    threads: int | None = None,
    confirm: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> DuplicateGroups:
    """``find_duplicate_groups`` on pre-encoded columns (what ``apply_hash_dedup`` uses at scale).

    id_codes (n,) int64 equal per image_id, -1 = unknown; hashes (n,) uint64 with hash_valid (n,)
    bool; pixels, nbytes (n,) int64; uris: (n,) str array or pyarrow array (only read for ties).
    ``confirm(a, b) -> keep``: rows a [P], b [P] of pHash links between different files
    (``curation.phash_confirm.candidate_row_pairs``); only the kept links group. None: all do.
    """
    n = len(id_codes)
    id_src, id_dst, _ = star_edges(id_codes)
    hash_codes = np.full(n, -1, dtype=np.int64)
    values = np.unique(hashes[hash_valid])
    hash_codes[hash_valid] = np.searchsorted(values, hashes[hash_valid])
    pairs = distinct_near_pairs(values, radius, threads=threads)
    unconfirmed = 0
    if confirm is None:
        h_src, h_dst, value_row = star_edges(hash_codes)
        near_src = np.concatenate([h_src, value_row[pairs[:, 0]]])
        near_dst = np.concatenate([h_dst, value_row[pairs[:, 1]]])
        n_links = len(pairs)
    else:  # every link between different files asks confirm; byte copies link by image_id
        a, b = candidate_row_pairs(id_codes, hash_codes, pairs)
        keep = np.asarray(confirm(a, b), dtype=bool)
        near_src, near_dst = a[keep], b[keep]
        n_links, unconfirmed = int(keep.sum()), int((~keep).sum())
    labels = components(n, np.concatenate([id_src, near_src]), np.concatenate([id_dst, near_dst]))
    keeper = keepers(labels, pixels, nbytes, uris)
    reason = np.full(n, None, dtype=object)
    dup = keeper != np.arange(n)
    exact = dup & (id_codes >= 0) & (id_codes == id_codes[keeper])
    reason[exact] = EXACT
    reason[dup & ~exact] = NEAR
    return DuplicateGroups(keeper=keeper, reason=reason, n_near_pairs=n_links, n_unconfirmed=unconfirmed)


def find_duplicate_groups(
    image_ids: np.ndarray,
    phashes: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    nbytes: np.ndarray,
    uris: np.ndarray,
    radius: int,
    threads: int | None = None,
) -> DuplicateGroups:
    """Exact + pHash duplicate groups of n images (connected components), one keeper per group.

    image_ids: (n,) str (sha256 hex) or None; phashes: (n,) 16-hex-digit str or None (a row
    without a pHash only takes part in exact matching); widths, heights, nbytes: (n,) ints (null
    as 0); uris: (n,) unique str. ``radius``: max Hamming distance (bits) of near duplicates.
    """
    n = len(uris)
    if not all(len(a) == n for a in (image_ids, phashes, widths, heights, nbytes)):
        raise ValueError("find_duplicate_groups: all columns must have the same length")
    hashes, valid = hex_to_uint64(list(phashes))
    pixels = np.asarray(widths, dtype=np.int64) * np.asarray(heights, dtype=np.int64)
    return group_duplicates(
        _codes(np.asarray(image_ids, dtype=object)),
        hashes,
        valid,
        pixels,
        np.asarray(nbytes, dtype=np.int64),
        np.asarray(uris, dtype=object),
        radius,
        threads,
    )


# ------------------------------------------------------------------------------------ catalog
def _hex_u64(chunk: pa.Array, what: str, prefix: bool, first_row: int = 0) -> np.ndarray:
    """uint64 of each value's first 16 hex digits (the whole value unless ``prefix``); nulls as 0.
    ``first_row``: the chunk's first row in its column (for the error message)."""
    filled = pc.fill_null(chunk, "0" * 16).cast(pa.string())
    if prefix:
        filled = pc.utf8_slice_codeunits(filled, 0, 16)
    lengths = pc.utf8_length(filled).to_numpy(zero_copy_only=False)
    if len(filled) and (lengths != 16).any():
        bad = int(np.flatnonzero(lengths != 16)[0])
        expected = "at least 16" if prefix else "16"
        raise ValueError(
            f"{what} at row {first_row + bad} is {chunk[bad].as_py()!r}: expected {expected} hex digits"
        )
    if not len(filled):
        return np.empty(0, dtype=np.uint64)
    offsets, data = filled.buffers()[1], filled.buffers()[2]
    start = int(np.frombuffer(offsets, dtype=np.int32)[filled.offset])
    raw = data.to_pybytes()[start : start + 16 * len(filled)]
    return np.frombuffer(bytes.fromhex(raw.decode("ascii")), dtype=">u8").astype(np.uint64)


def _hashes_from_arrow(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A string column of 16-hex-digit pHashes -> (uint64 (n,), valid (n,)), chunk by chunk and
    without Python objects."""
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    starts = np.cumsum([0] + [len(chunk) for chunk in col.chunks])[:-1]
    parts = [_hex_u64(c, "phash", False, int(at)) for c, at in zip(col.chunks, starts, strict=True)]
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)), valid


def image_id_codes(col: pa.ChunkedArray) -> np.ndarray:
    """Equal-value codes (n,) int64 of the image_id column; -1 for null.

    image_ids are sha256 hex digests: their first 16 digits (a uint64) tell almost all of them
    apart, without a hash table over the 64-character strings (which cost ~260 B per row). Rows
    whose prefix is shared (exact copies, or a 64-bit prefix collision) get codes from their full
    strings, so the codes are exact for any values. Values that are not hex fall back to a
    dictionary encoding of the whole column.
    """
    n = len(col)
    codes = np.full(n, -1, dtype=np.int64)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any():
        return codes
    try:
        parts = [_hex_u64(chunk, "image_id", prefix=True) for chunk in col.chunks]
    except ValueError:  # not hex: the exact, heavier way
        encoded = col.cast(pa.string()).combine_chunks().dictionary_encode()
        return pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    prefixes = np.concatenate(parts)[valid]
    del parts
    uniq, inverse, counts = np.unique(prefixes, return_inverse=True, return_counts=True)
    del prefixes, uniq
    inverse = inverse.ravel().astype(np.int64)
    shared = counts[inverse] > 1
    rows = np.flatnonzero(valid)
    if shared.any():  # exact codes for the shared prefixes, numbered after the unique ones
        exact = col.take(pa.array(rows[shared])).cast(pa.string()).combine_chunks().dictionary_encode()
        inverse[shared] = len(counts) + exact.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    codes[rows] = inverse
    return codes


def int_column(col: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _candidate_filter() -> pc.Expression:
    """Rows hash dedup groups: accepted, or duplicates for a hash reason (recomputed) or for
    ``near_duplicate_embedding`` (grouped too, so the groups do not change when the semantic stage
    removes a hash keeper; such a row keeps its status unless it becomes a hash duplicate)."""
    status, reason = pc.field("status"), pc.field("reason")
    return (status == Status.ACCEPTED.value) | (
        (status == Status.DUPLICATE.value) & reason.isin(MEMBER_REASONS)
    )


def _candidates(table: pa.Table) -> pa.Table:
    """The rows of ``table`` that ``_candidate_filter`` keeps (``table`` itself, not a copy, when
    every row is one: ``apply_hash_dedup`` reads only candidates). The same rule, on arrays."""
    status, reason = table.column("status"), table.column("reason")
    hash_dup = pc.and_(
        pc.equal(status, Status.DUPLICATE.value), pc.is_in(reason, value_set=pa.array(MEMBER_REASONS))
    )
    mask = pc.fill_null(pc.or_(pc.equal(status, Status.ACCEPTED.value), hash_dup), False)
    return table if pc.all(mask).as_py() is not False else table.filter(mask)


def decide(
    table: pa.Table, radius: int, threads: int | None = None, confirm: PairConfirm | None = None
) -> tuple[pa.Table, DuplicateGroups]:
    """New (uri, status, reason, dup_of, dup_of_uri) for the candidate rows of an images table.

    ``confirm(candidates, a, b) -> keep`` decides the pHash links between different files
    (``curation.phash_confirm``); None: every link within the radius stands."""
    cand = _candidates(table)
    pixels = int_column(cand.column("width")) * int_column(cand.column("height"))
    hashes, valid = _hashes_from_arrow(cand.column("phash"))
    uris = cand.column("uri")
    groups = group_duplicates(
        image_id_codes(cand.column("image_id")),
        hashes,
        valid,
        pixels,
        int_column(cand.column("bytes")),
        uris,
        radius,
        threads,
        None if confirm is None else (lambda a, b: confirm(cand, a, b)),
    )
    del pixels, hashes, valid
    dup = groups.is_duplicate
    # the kept row of each duplicate; null for kept rows, so ``take`` copies only the duplicates' ids
    keeper = pa.array(groups.keeper, mask=~dup)
    is_dup = pa.array(dup)
    new = pa.table(
        {
            "uri": uris,
            "status": pc.if_else(is_dup, Status.DUPLICATE.value, Status.ACCEPTED.value),
            "reason": pa.array(groups.reason, type=pa.string()),
            "dup_of": cand.column("image_id").take(keeper).cast(pa.string()),
            "dup_of_uri": uris.take(keeper).cast(pa.string()),
        }
    )
    # a hash keeper the semantic stage removed stays as it is (that stage re-decides it)
    semantic = pc.fill_null(pc.equal(cand.column("reason"), EMBEDDING), False)
    stays = pc.and_(semantic, pc.invert(is_dup))
    if pc.any(stays).as_py():
        new = pa.table(
            {
                n: pc.if_else(stays, cand.column(n), new.column(n)) if n != "uri" else uris
                for n in new.column_names
            }
        )
    return new, groups


def changed_rows(old: pa.Table, new: pa.Table) -> np.ndarray:
    """(n,) bool: rows (same order) whose status, reason, dup_of or dup_of_uri differ (null-aware)."""
    changed = np.zeros(new.num_rows, dtype=bool)
    for name in ("status", "reason", "dup_of", "dup_of_uri"):
        a, b = old.column(name), new.column(name)
        same = pc.fill_null(pc.equal(a, b), False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        changed |= ~pc.or_(same, both_null).to_numpy(zero_copy_only=False)
    return changed


def apply_hash_dedup(
    catalog: Catalog,
    cfg: HashDedupConfig,
    run_id: str,
    threads: int | None = None,
    confirm: PairConfirm | None = None,
) -> dict:
    """Recompute hash-duplicate statuses over the images table; upsert only changed rows.

    ``confirm``: see :func:`decide` (``curation.neardup.phash_confirmer`` builds one from the copy
    vectors). Returns counts: candidates, kept, exact_duplicate, near_duplicate_phash, groups,
    near_pairs, unconfirmed (links the confirm function refused), changed, radius, images_version
    (after the commit) and seconds.
    """
    start = time.perf_counter()
    version = catalog.version("images")
    if not cfg.enabled or version is None:
        return {"enabled": cfg.enabled, "changed": 0, "images_version": version}
    # only the candidates, filtered while scanning: rejected rows never take memory here
    table = read_images(catalog, version=version, columns=DEDUP_COLUMNS, where=_candidate_filter())
    new, groups = decide(table, cfg.phash_radius, threads, confirm)
    old = table.select(["uri", "status", "reason", "dup_of", "dup_of_uri"])
    del table
    changed = changed_rows(old, new)
    if changed.any():
        # only the decided columns of the changed rows: no full rows to read back
        updates = new.filter(pa.array(changed))
        # no changed row is a near_duplicate_embedding any more: its cosine detail goes
        updates = updates.append_column("detail", pa.nulls(updates.num_rows, pa.string()))
        now = pa.scalar(dt.datetime.now(dt.UTC), type=IMAGES_SCHEMA.field("updated_at").type)
        updates = updates.append_column("run_id", pa.array([run_id] * updates.num_rows, pa.string()))
        updates = updates.append_column("updated_at", pa.array([now.as_py()] * updates.num_rows, now.type))
        version = update_images(catalog, updates, run_id)
    reasons = pc.value_counts(new.column("reason")).to_pylist()
    by_reason = {r["values"]: r["counts"] for r in reasons if r["values"] is not None}
    return {
        "enabled": True,
        "radius": cfg.phash_radius,
        "candidates": new.num_rows,
        "kept": int((~groups.is_duplicate).sum()),
        EXACT: int(by_reason.get(EXACT, 0)),
        NEAR: int(by_reason.get(NEAR, 0)),
        "groups": groups.n_groups,
        "near_pairs": groups.n_near_pairs,
        "unconfirmed": groups.n_unconfirmed,
        "changed": int(changed.sum()),
        "images_version": version,
        "seconds": round(time.perf_counter() - start, 3),
    }
