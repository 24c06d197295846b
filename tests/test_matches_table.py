"""The geometric_matches table: one stored verification per (image pair, verifier), either order."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from data_catalog.catalog import Catalog
from data_catalog.export import export_table
from data_catalog.matches import StoredMatch, read_matches, write_matches


def test_matches_are_keyed_by_the_unordered_pair_and_verifier_and_never_overwritten(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    assert read_matches(catalog, "v1", [("a", "b")]) == {}  # no table yet: nothing stored
    m = StoredMatch(inliers=42, matches=50, spread=0.31, mirrored=True)
    assert write_matches(catalog, "v1", {("b", "a"): m, ("c", "d"): StoredMatch(3, 9, 0.0, False)}, "r1") == 2
    got = read_matches(catalog, "v1", [("a", "b"), ("d", "c"), ("a", "c")])
    assert got[("a", "b")].inliers == 42 and got[("a", "b")].mirrored
    assert abs(got[("a", "b")].spread - 0.31) < 1e-6 and got[("c", "d")].inliers == 3
    assert ("a", "c") not in got
    assert read_matches(catalog, "v2", [("a", "b")]) == {}  # another verifier's matches are not reused
    # a second write of the same pair leaves the first measurement; a new pair is added
    assert write_matches(catalog, "v1", {("a", "b"): StoredMatch(1, 1, 0.0, False), ("a", "c"): m}, "r2") == 1
    assert read_matches(catalog, "v1", [("a", "b")])[("a", "b")].inliers == 42
    out = tmp_path / "matches.parquet"
    assert export_table(catalog, "geometric_matches", out) == 3
    rows = pq.read_table(out).to_pylist()
    assert {(r["image_a"], r["image_b"]) for r in rows} == {("a", "b"), ("c", "d"), ("a", "c")}
    assert {r["run_id"] for r in rows} == {"r1", "r2"}
