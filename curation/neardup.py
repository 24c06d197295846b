"""Near-duplicates by copy-detection vectors: k-NN pairs above a cosine threshold, grouped.

Candidate pairs come from a faiss k-NN self-search over the copy-descriptor vectors (L2-normalised,
``data_catalog.embeddings``; ``curation.vector_search``: exact up to ``exact_max`` vectors, IVF above;
GPU when present): each image's ``k`` nearest others at cosine >= ``SemanticDedupConfig.verify_from``
(or ``threshold`` without geometric verification). A candidate at >= ``verify_below`` is a link; under
it, a link only when the two images match geometrically (``curation.geometric``; the measurements are
stored in the catalog's ``geometric_matches`` and reused by later runs), and a pair that cannot be
verified (an image under ``verify_min_side``, or unreadable now) only at >= ``threshold``. Groups are
the connected components of these links and keep ONE member by hash dedup's rule (highest
resolution, then the larger file, then the smallest uri: ``curation.hashdedup.keepers``); every other
member becomes ``duplicate`` / ``near_duplicate_embedding`` with ``dup_of`` / ``dup_of_uri`` naming the
kept image and ``detail`` the cosine to it.

``apply_semantic_dedup`` is a function of the catalog, like hash dedup: each run recomputes the
groups over every hash-kept row (accepted, or a near_duplicate_embedding of an earlier run) that has
a vector for the copy model, so a new image is compared with every kept image of the catalog, not
only with the other new ones, and a higher-resolution copy arriving later takes the keeper's place.
Only rows whose decision changed are written, in one Delta commit (``Catalog.update``).

Hash duplicates keep pointing at their hash keeper; when that keeper is itself a near duplicate by
vectors, following ``dup_of`` twice reaches the kept image.

Limits: a group larger than ``k + 1`` is still one component when its members' neighbour lists
overlap (copies of one photo are each other's nearest neighbours), but a pair that is in neither
image's top ``k`` is missed; raise ``k`` for pools with large groups of copies.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.hashdedup import changed_rows, components, image_id_codes, int_column, keepers, star_edges
from curation.phash_confirm import PairConfirm, cosine_pairs, embedding_confirm, size_confirm
from curation.vector_search import choose_index, search, settings
from data_catalog.catalog import Catalog
from data_catalog.embeddings import embedded_ids, read_embeddings
from data_catalog.images import IMAGES_SCHEMA, Reason, Status, read_images, update_images

__all__ = ["SemanticGroups", "apply_semantic_dedup", "choose_index", "group_pairs", "near_duplicate_pairs",
           "phash_confirmer", "search"]  # fmt: skip

EMBEDDING = Reason.NEAR_DUPLICATE_EMBEDDING.value
COLUMNS = [
    "uri",
    "image_id",
    "width",
    "height",
    "bytes",
    "status",
    "reason",
    "dup_of",
    "dup_of_uri",
    "detail",
]
DECIDED = ["uri", "status", "reason", "dup_of", "dup_of_uri", "detail"]


def near_duplicate_pairs(
    vectors: np.ndarray, threshold: float, k: int, cfg: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i [P], j [P] int64 with i < j, sim [P] float32) of rows of ``vectors`` [N, D]
    (L2-normalised) with cosine >= ``threshold``, among each row's ``k`` nearest other rows. Each
    pair once, with the larger of its two searched similarities (approximate indexes may differ)."""
    n = len(vectors)
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    sims, idx = search(vectors, vectors, min(k + 1, n), cfg)
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    keep = (idx >= 0) & (idx != rows) & (sims >= threshold)
    a, b, s = rows[keep], idx[keep], sims[keep]
    i, j = np.minimum(a, b), np.maximum(a, b)
    code = i * n + j
    order = np.lexsort((-s, code))  # per pair, the larger similarity first
    code, s = code[order], s[order]
    first = np.r_[True, code[1:] != code[:-1]] if len(code) else np.zeros(0, bool)
    code, s = code[first], s[first]
    return code // n, code % n, s.astype(np.float32)


@dataclass(frozen=True)
class SemanticGroups:
    """Per row: ``keeper`` (n,) int64 (itself when kept), ``cosine`` (n,) float32 to its keeper
    (1 for kept rows); ``n_pairs``: the links grouped (after verification)."""

    keeper: np.ndarray
    cosine: np.ndarray
    n_pairs: int
    candidates: int = 0  # k-NN pairs from the candidate floor up (verify_from, or the threshold)
    above_threshold: int = 0  # of them, at or above the threshold
    checked: int = 0  # pairs verified geometrically
    vetoed: int = 0  # of them, failed (not linked)

    @property
    def is_duplicate(self) -> np.ndarray:
        return self.keeper != np.arange(len(self.keeper))


def group_pairs(
    vectors: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    pixels: np.ndarray,
    nbytes: np.ndarray,
    uris: Any,
    same_file: np.ndarray | None = None,
) -> SemanticGroups:
    """Connected components of the links (i, j) over n = len(vectors) rows, one keeper each by hash
    dedup's rule; ``same_file`` (n,) int64 codes link rows with equal codes >= 0 (byte copies)."""
    n = len(vectors)
    src, dst = [np.asarray(i, np.int64)], [np.asarray(j, np.int64)]
    if same_file is not None:
        s, d, _ = star_edges(same_file)
        src.append(s)
        dst.append(d)
    labels = components(n, np.concatenate(src), np.concatenate(dst))
    keeper = keepers(labels, pixels, nbytes, uris)
    cosine = np.ones(n, dtype=np.float32)
    dup = np.flatnonzero(keeper != np.arange(n))
    if dup.size:
        cosine[dup] = cosine_pairs(vectors, dup, keeper[dup])
    return SemanticGroups(keeper=keeper, cosine=cosine, n_pairs=len(i))


# ------------------------------------------------------------------------------------ catalog
def _candidate_filter() -> pc.Expression:
    """Rows this stage groups: accepted, or its own duplicates of an earlier run (recomputed)."""
    status, reason = pc.field("status"), pc.field("reason")
    return (status == Status.ACCEPTED.value) | ((status == Status.DUPLICATE.value) & (reason == EMBEDDING))


def _vectors(catalog: Catalog, model_id: str, ids: list[str]) -> tuple[dict[str, int], np.ndarray]:
    """({image_id: row}, vectors [M, D] float32) of the ids that have a vector for ``model_id``."""
    have = sorted(embedded_ids(catalog, model_id) & set(ids))
    if not have:
        return {}, np.zeros((0, 1), np.float32)
    got_ids, vectors = read_embeddings(catalog, model_id, have)
    return {str(v): r for r, v in enumerate(got_ids)}, np.asarray(vectors, dtype=np.float32)


def _detail(cosine: float, direct: bool, verified: bool) -> str:
    via = (
        " (matched geometrically)"
        if direct and verified
        else ""
        if direct
        else " (linked through other copies)"
    )
    return f"copy-descriptor cosine {cosine:.4f} to the kept image{via}"


def candidate_floor(cfg: Any) -> float:
    """The cosine from which k-NN pairs are candidates: ``cfg.threshold``, or the lower ``verify_from``
    when pairs are verified geometrically."""
    verify_from = getattr(cfg, "verify_from", None)
    if getattr(cfg, "verify", "none") != "geometric" or verify_from is None:
        return float(cfg.threshold)
    return float(min(cfg.threshold, verify_from))


def verified_links(
    cand: pa.Table, i: np.ndarray, j: np.ndarray, sims: np.ndarray, cfg: Any,
    catalog: Catalog | None = None, run_id: str = "",
) -> tuple[np.ndarray, dict[str, int]]:  # fmt: skip
    """``(keep [P] bool, counts)`` of candidate links (i, j) at cosines ``sims``. Without geometric
    verification a link stands at ``cfg.threshold``. With ``cfg.verify == "geometric"``: a link at or
    above ``cfg.verify_below`` stands; under it, a pair of images whose shorter sides are >=
    ``cfg.verify_min_side`` stands only when the two images match geometrically
    (``curation.geometric.verify_uri_pairs``), down to :func:`candidate_floor`; a pair that cannot be
    verified (a smaller image, or one that cannot be read now) is decided by the cosine at
    ``cfg.threshold``. ``counts``: ``checked`` (pairs verified), ``vetoed`` (of them, failed). With a
    ``catalog``, matches are stored and reused there (``data_catalog.matches``)."""
    from curation.geometric import verify_uri_pairs

    keep = sims >= cfg.threshold
    counts = {"checked": 0, "vetoed": 0}
    if getattr(cfg, "verify", "none") != "geometric" or len(i) == 0:
        return keep, counts
    big = np.fmin(int_column(cand.column("width")), int_column(cand.column("height"))) >= cfg.verify_min_side
    keep |= sims >= cfg.verify_below
    check = np.flatnonzero((sims < cfg.verify_below) & big[i] & big[j])
    if check.size == 0:
        return keep, counts
    uris = cand.column("uri").to_pylist()
    pairs = [(uris[int(i[n])], uris[int(j[n])]) for n in check]
    image_ids = cand.column("image_id").to_pylist()
    ids = [(image_ids[int(i[n])], image_ids[int(j[n])]) for n in check]
    keyed = all(a and b for a, b in ids)
    ok, matches = verify_uri_pairs(
        pairs, cfg.min_inliers, cfg.min_spread, ids=ids if keyed else None, catalog=catalog, run_id=run_id
    )
    unreadable = np.array([m is None for m in matches], dtype=bool)
    keep[check] = ok | (unreadable & (sims[check] >= cfg.threshold))  # unreadable: the cosine decides
    counts = {"checked": int((~unreadable).sum()), "vetoed": int((~ok & ~unreadable).sum())}
    return keep, counts


def decide(
    cand: pa.Table, vectors: np.ndarray, threshold: float, k: int, cfg: Any,
    catalog: Catalog | None = None, run_id: str = "",
) -> tuple[pa.Table, SemanticGroups]:  # fmt: skip
    """New (uri, status, reason, dup_of, dup_of_uri, detail) of candidate rows with their vectors
    [n, D] (row r's vector is vectors[r]); geometric matches stored in and reused from ``catalog``."""
    cfg = cfg.model_copy(update={"threshold": threshold}) if hasattr(cfg, "model_copy") else cfg
    i, j, sims = near_duplicate_pairs(vectors, candidate_floor(cfg), k, cfg)
    keep, counts = verified_links(cand, i, j, sims, cfg, catalog, run_id)
    above = int((sims >= threshold).sum())
    i, j = i[keep], j[keep]
    uris = cand.column("uri")
    pixels = int_column(cand.column("width")) * int_column(cand.column("height"))
    groups = group_pairs(
        vectors, i, j, pixels, int_column(cand.column("bytes")), uris, image_id_codes(cand.column("image_id"))
    )
    groups = replace(
        groups,
        candidates=len(keep),
        above_threshold=above,
        checked=counts["checked"],
        vetoed=counts["vetoed"],
    )
    dup = groups.is_duplicate
    keeper = pa.array(groups.keeper, mask=~dup)
    links = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))
    verified = getattr(cfg, "verify", "none") == "geometric"
    details = [
        _detail(float(c), (min(r, kr), max(r, kr)) in links, verified and c < cfg.verify_below) if d else None
        for r, (c, d, kr) in enumerate(zip(groups.cosine, dup, groups.keeper.tolist(), strict=True))
    ]
    new = pa.table(
        {
            "uri": uris,
            "status": pc.if_else(pa.array(dup), Status.DUPLICATE.value, Status.ACCEPTED.value),
            "reason": pa.array([EMBEDDING if d else None for d in dup], pa.string()),
            "dup_of": cand.column("image_id").take(keeper).cast(pa.string()),
            "dup_of_uri": uris.take(keeper).cast(pa.string()),
            "detail": pa.array(details, pa.string()),
        }
    )
    return new, groups


def decided_changed(old: pa.Table, new: pa.Table) -> np.ndarray:
    """(n,) bool: rows whose status, reason, dup_of, dup_of_uri or detail differ (null-aware)."""
    changed = changed_rows(old, new)
    a, b = old.column("detail"), new.column("detail")
    same = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
    return changed | ~same.to_numpy(zero_copy_only=False)


def commit_decisions(catalog: Catalog, updates: pa.Table, run_id: str) -> int:
    """Set the decided columns of ``updates`` (+ run_id, updated_at) in one commit; the version."""
    now = pa.scalar(dt.datetime.now(dt.UTC), type=IMAGES_SCHEMA.field("updated_at").type)
    updates = updates.append_column("run_id", pa.array([run_id] * updates.num_rows, pa.string()))
    updates = updates.append_column("updated_at", pa.array([now.as_py()] * updates.num_rows, now.type))
    return update_images(catalog, updates, run_id)


def _report_pairs(new: pa.Table, groups: SemanticGroups, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` (duplicate uri, kept uri, cosine) spread evenly over the cosines (lowest first,
    the ones a human should check)."""
    dup = np.flatnonzero(groups.is_duplicate)
    if dup.size == 0 or limit <= 0:
        return []
    dup = dup[np.argsort(groups.cosine[dup], kind="stable")]
    pick = dup[np.unique(np.linspace(0, len(dup) - 1, min(limit, len(dup))).round().astype(int))]
    uris, kept = new.column("uri"), new.column("dup_of_uri")
    return [{"uri": uris[int(r)].as_py(), "dup_of_uri": kept[int(r)].as_py(), "cosine": round(float(groups.cosine[r]), 4)} for r in pick]  # fmt: skip


def apply_semantic_dedup(
    catalog: Catalog, copy_model_id: str, cfg: Any, run_id: str, max_pairs: int = 48
) -> dict[str, Any]:
    """Recompute near_duplicate_embedding statuses over the catalog (module docstring); write only
    changed rows. ``cfg``: ``SemanticDedupConfig``. Returns counts (candidates, with_vectors,
    missing_vectors, kept, near_duplicate_embedding, pairs, changed, index, threshold, images_version,
    seconds) and ``pairs``: up to ``max_pairs`` found duplicates with uris and cosines."""
    start = time.perf_counter()
    version = catalog.version("images")
    if not cfg.enabled or version is None:
        return {"enabled": cfg.enabled, "changed": 0, "images_version": version}
    table = read_images(catalog, version=version, columns=COLUMNS, where=_candidate_filter())
    ids = table.column("image_id").to_pylist()
    where, vectors = _vectors(catalog, copy_model_id, sorted({i for i in ids if i is not None}))
    rows = np.array([where.get(i, -1) if i is not None else -1 for i in ids], dtype=np.int64)
    has = rows >= 0
    cand = table.filter(pa.array(has))
    vecs = vectors[rows[has]] if has.any() else np.zeros((0, vectors.shape[1]), np.float32)
    new, groups = decide(cand, vecs, cfg.threshold, cfg.k, cfg, catalog, run_id)
    changed = decided_changed(cand.select(DECIDED), new)
    if changed.any():
        version = commit_decisions(catalog, new.filter(pa.array(changed)), run_id)
    n_dup = int(groups.is_duplicate.sum())
    return {
        "enabled": True,
        "model_id": copy_model_id,
        "threshold": cfg.threshold,
        "index": choose_index(len(vecs), max(vecs.shape[1], 1), settings(cfg)),
        "candidates": table.num_rows,
        "with_vectors": int(has.sum()),
        "missing_vectors": int((~has).sum()),
        "kept": int(len(vecs) - n_dup),
        EMBEDDING: n_dup,
        "verify_from": candidate_floor(cfg),
        "candidate_pairs": groups.candidates,
        "pairs_above_threshold": groups.above_threshold,
        "pairs_linked": groups.n_pairs,
        "geometric_checked": groups.checked,
        "geometric_vetoed": groups.vetoed,
        "changed": int(changed.sum()),
        "images_version": version,
        "seconds": round(time.perf_counter() - start, 3),
        "pairs": _report_pairs(new, groups, max_pairs),
    }


def phash_confirmer(
    catalog: Catalog,
    copy_model_id: str | None,
    min_cosine: float,
    radius: int,
    small_side: int = 64,
    small_radius: int = 0,
) -> PairConfirm:
    """The confirm function of hash dedup (``apply_hash_dedup(confirm=...)``), measured in
    ``docs/semantic-dedup.md``: a pHash link between different files whose smaller image has a short
    side >= ``small_side`` px stands (pHash at radius 6 had no false pair there); a smaller pair
    stands when the copy vectors of ``copy_model_id`` reach ``min_cosine``, or, without both vectors
    (or ``copy_model_id`` None), when the pHash distance is <= ``small_radius``."""
    fallback = size_confirm(radius, small_side, small_radius)
    if copy_model_id is None:
        return fallback
    model = copy_model_id
    return embedding_confirm(lambda ids: _vectors(catalog, model, ids), min_cosine, fallback, small_side)
