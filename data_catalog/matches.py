"""The ``geometric_matches`` table: one geometric verification per (image pair, verifier).

Semantic dedup and leak removal recompute their decisions over the whole catalog each run, and a
candidate pair under ``verify_below`` is decided by matching local features of the two images
(``curation.geometric``: SIFT, RANSAC), which costs far more than the cosine that proposed it (about
140 ms of SIFT per image, 8 ms per pair on one core). The outcome of a pair depends only on the two
images' bytes and the verifier's algorithm, so it is stored here and a night verifies only the pairs it
has not seen: a pair of images that both arrived in earlier runs costs a lookup.

Key: ``image_a``, ``image_b`` (the two images' ids, sha256 of their bytes, ``image_a < image_b``) and
``verifier`` (``curation.geometric.VERIFIER_ID``: the algorithm and its parameters; a changed algorithm
gets a new id and verifies again). The stored values are the match's raw measurements (inliers,
ratio-test matches, spread, mirrored), not a decision: ``min_inliers`` and ``min_spread`` apply on read,
so changing them needs no re-verification. Rows are immutable (``Catalog.insert_new``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "geometric_matches"
KEY = ("image_a", "image_b", "verifier")
_TS = pa.timestamp("us", tz="UTC")

MATCHES_SCHEMA = pa.schema(
    [
        pa.field("image_a", pa.string(), nullable=False),  # the smaller image id of the pair
        pa.field("image_b", pa.string(), nullable=False),
        pa.field("verifier", pa.string(), nullable=False),  # curation.geometric.VERIFIER_ID
        pa.field("inliers", pa.int32(), nullable=False),
        pa.field("matches", pa.int32(), nullable=False),
        pa.field("spread", pa.float32(), nullable=False),
        pa.field("mirrored", pa.bool_(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("created_at", _TS),
    ]
)


class StoredMatch(NamedTuple):
    inliers: int
    matches: int
    spread: float
    mirrored: bool


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def read_matches(
    catalog: Catalog, verifier: str, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], StoredMatch]:
    """The stored matches of ``pairs`` (image id pairs, either order) under ``verifier``, keyed by the
    ordered pair; pairs never verified are absent."""
    if not pairs:
        return {}
    wanted = {_ordered(a, b) for a, b in pairs}
    ids = sorted({i for pair in wanted for i in pair})
    table = catalog.read(
        TABLE,
        MATCHES_SCHEMA,
        columns=["image_a", "image_b", "verifier", "inliers", "matches", "spread", "mirrored"],
        where=(pc.field("verifier") == pa.scalar(verifier)) & pc.field("image_a").isin(ids),
    )
    out: dict[tuple[str, str], StoredMatch] = {}
    if table.num_rows == 0:
        return out
    cols = [
        table.column(c).to_pylist()
        for c in ("image_a", "image_b", "inliers", "matches", "spread", "mirrored")
    ]
    for a, b, inliers, matches, spread, mirrored in zip(*cols, strict=True):
        if (a, b) in wanted:
            out[a, b] = StoredMatch(int(inliers), int(matches), float(spread), bool(mirrored))
    return out


def write_matches(
    catalog: Catalog, verifier: str, matches: dict[tuple[str, str], StoredMatch], run_id: str
) -> int:
    """Store ``matches`` (image id pair -> measurements) under ``verifier`` in one commit; pairs already
    stored are left as they are. Returns the rows inserted."""
    if not verifier:
        raise ValueError("write_matches: verifier is empty")
    rows = {_ordered(a, b): m for (a, b), m in matches.items() if a != b}
    if not rows:
        return 0
    keys = sorted(rows)
    n = len(keys)
    now = datetime.now(UTC)
    data = pa.table(
        {
            "image_a": pa.array([k[0] for k in keys], pa.string()),
            "image_b": pa.array([k[1] for k in keys], pa.string()),
            "verifier": pa.array([verifier] * n, pa.string()),
            "inliers": pa.array(np.array([rows[k].inliers for k in keys], np.int32)),
            "matches": pa.array(np.array([rows[k].matches for k in keys], np.int32)),
            "spread": pa.array(np.array([rows[k].spread for k in keys], np.float32)),
            "mirrored": pa.array([rows[k].mirrored for k in keys], pa.bool_()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "created_at": pa.array([now] * n, _TS),
        },
        schema=MATCHES_SCHEMA,
    )
    _, inserted = catalog.insert_new(TABLE, data, MATCHES_SCHEMA, key=KEY, metadata={"run_id": run_id})
    return inserted
