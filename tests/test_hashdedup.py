"""Exact + pHash dedup: the near-pair index against brute force, grouping rules, the catalog step
on real files, and precision/recall on generated copies of real photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from benchmarks.measure_phash_radius import GEOMETRIC, pipeline_phash, variant_bytes
from curation.binary_index import (
    _plan,
    distinct_near_pairs,
    hamming,
    hex_to_uint64,
    near_pairs,
    near_pairs_brute,
    uint64_to_hex,
)
from curation.config import CurateConfig, HashDedupConfig
from curation.hashdedup import apply_hash_dedup, decide, find_duplicate_groups
from curation.ingest import ingest
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, read_images, status_counts, upsert_images

U64 = np.uint64


def _flip(values: np.ndarray, n_bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``values`` with exactly ``n_bits[i]`` distinct random bits flipped in element i."""
    out = values.copy()
    for i, k in enumerate(n_bits):
        for b in rng.choice(64, size=int(k), replace=False):
            out[i] ^= U64(1) << U64(int(b))
    return out


def _planted(n: int, radius: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random hashes + copies of a third of them at distances 0..radius+1 (cycled)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64 - 1, n, dtype=U64, endpoint=True)
    src = rng.choice(n, n // 3, replace=False)
    dist = np.arange(len(src)) % (radius + 2)
    copies = _flip(base[src], dist, rng)
    pairs = np.stack([src, n + np.arange(len(src))], axis=1)
    return np.concatenate([base, copies]), np.concatenate([pairs, dist[:, None]], axis=1)


@pytest.mark.parametrize(
    ("radius", "blocks"), [(4, None), (6, None), (6, 7), (6, 10), (8, None), (8, 12), (1, 2)]
)
def test_near_pairs_equals_brute_force_with_planted_pairs(radius: int, blocks: int | None) -> None:
    hashes, planted = _planted(2400, radius, seed=radius * 100 + (blocks or 0))
    got = near_pairs(hashes, radius, blocks=blocks)
    assert np.array_equal(got, near_pairs_brute(hashes, radius))
    found = {(int(a), int(b)) for a, b in got}
    inside = planted[planted[:, 2] <= radius]
    assert all((int(a), int(b)) in found for a, b, _ in inside)  # every planted pair <= r
    outside = planted[planted[:, 2] == radius + 1]
    assert len(outside) > 0 and not any((int(a), int(b)) in found for a, b, _ in outside)
    assert (hamming(hashes[got[:, 0]], hashes[got[:, 1]]) <= radius).all()


def test_multi_index_path_on_a_larger_set_matches_brute_force() -> None:
    """12k distinct hashes: large enough that the cost model picks multi-index hashing."""
    hashes, _ = _planted(9000, 8, seed=7)
    values = np.unique(hashes)
    assert _plan(len(values), 8) is not None  # not the brute-force fallback
    got = distinct_near_pairs(values, 8, threads=2)
    assert np.array_equal(got, near_pairs_brute(values, 8))


def test_identical_hashes_give_all_pairs_and_radius_zero() -> None:
    h = np.array([5, 9, 5, 5, 9 ^ 1], dtype=U64)
    expect = [[0, 2], [0, 3], [1, 4], [2, 3]]
    assert near_pairs(h, 1).tolist() == expect
    assert near_pairs(h, 0).tolist() == [[0, 2], [0, 3], [2, 3]]
    with pytest.raises(ValueError, match="radius"):
        near_pairs(h, -1)


def test_hex_round_trip_and_bad_hashes() -> None:
    hexes = ["0123456789abcdef", None, "ffffffffffffffff"]
    values, valid = hex_to_uint64(hexes)
    assert valid.tolist() == [True, False, True]
    assert uint64_to_hex(values[[0, 2]]) == ["0123456789abcdef", "ffffffffffffffff"]
    with pytest.raises(ValueError, match="16 hex digits"):
        hex_to_uint64(["abc"])
    with pytest.raises(ValueError, match="non-hex"):
        hex_to_uint64(["zz23456789abcdef"])


def _rows(spec: list[tuple[str, str | None, int, int, int]]) -> dict[str, np.ndarray]:
    """(uri, phash hex, width, height, bytes) rows; image_id = 'id-' + uri unless set later."""
    uris, phashes, w, h, b = zip(*spec, strict=True)
    return {
        "image_ids": np.array([f"id-{u}" for u in uris], dtype=object),
        "phashes": np.array(phashes, dtype=object),
        "widths": np.array(w),
        "heights": np.array(h),
        "nbytes": np.array(b),
        "uris": np.array(uris, dtype=object),
    }


def _keeper_uris(
    cols: dict[str, np.ndarray], radius: int, perm: np.ndarray
) -> dict[str, tuple[str, str | None]]:
    shuffled = {k: v[perm] for k, v in cols.items()}
    g = find_duplicate_groups(**shuffled, radius=radius)
    uris = shuffled["uris"]
    return {str(uris[i]): (str(uris[g.keeper[i]]), g.reason[i]) for i in range(len(uris))}


def test_chain_resolves_to_one_keeper_the_highest_resolution_in_any_order() -> None:
    a, b, c = 0x0, 0x3F, 0xFFF  # a~b at 6 bits, b~c at 6 bits, a~c at 12 bits (> radius)
    cols = _rows(
        [
            ("a.jpg", f"{a:016x}", 100, 100, 10),
            ("b.jpg", f"{b:016x}", 400, 300, 10),  # the highest resolution: keeper of the chain
            ("c.jpg", f"{c:016x}", 200, 200, 99),
            ("d.jpg", f"{~a & (2**64 - 1):016x}", 900, 900, 10),  # far from all: alone
        ]
    )
    rng = np.random.default_rng(0)
    results = [_keeper_uris(cols, 6, rng.permutation(4)) for _ in range(5)]
    assert all(r == results[0] for r in results)
    res = results[0]
    assert res["a.jpg"] == ("b.jpg", "near_duplicate_phash") and res["c.jpg"] == (
        "b.jpg",
        "near_duplicate_phash",
    )
    assert res["b.jpg"] == ("b.jpg", None) and res["d.jpg"] == ("d.jpg", None)


def test_ties_break_on_bytes_then_smallest_uri() -> None:
    same = "00000000ffffffff"
    cols = _rows([("z.png", same, 64, 64, 500), ("m.jpg", same, 64, 64, 100), ("b.jpg", same, 64, 64, 100)])
    res = _keeper_uris(cols, 0, np.arange(3))
    assert {u: k for u, (k, _) in res.items()} == {u: "z.png" for u in res}  # larger file wins
    cols["nbytes"][:] = 100
    for perm in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        assert {k for k, _ in _keeper_uris(cols, 0, np.array(perm)).values()} == {"b.jpg"}


def test_exact_and_near_duplicates_together() -> None:
    cols = _rows(
        [
            ("orig.jpg", "0f0f0f0f0f0f0f0f", 800, 600, 90_000),
            ("copy.jpg", "0f0f0f0f0f0f0f0f", 800, 600, 90_000),  # same bytes as orig
            ("small.jpg", "0f0f0f0f0f0f0f03", 400, 300, 20_000),  # resized: 2 bits away
            ("nohash.jpg", None, 800, 600, 90_000),  # same bytes, no pHash: exact matching only
            ("other.jpg", "f0f0f0f0f0f0f0f0", 800, 600, 95_000),
        ]
    )
    cols["image_ids"][[1, 3]] = cols["image_ids"][0]
    res = _keeper_uris(cols, 4, np.arange(5))
    assert res["orig.jpg"] == ("copy.jpg", "exact_duplicate") or res["copy.jpg"] == (
        "orig.jpg",
        "exact_duplicate",
    )
    keeper = "copy.jpg" if res["copy.jpg"][1] is None else "orig.jpg"
    assert keeper == "copy.jpg"  # same pixels and bytes: the smaller uri wins
    assert res["nohash.jpg"] == (keeper, "exact_duplicate")
    assert res["small.jpg"] == (keeper, "near_duplicate_phash")
    assert res["other.jpg"] == ("other.jpg", None)


def _catalog_rows(ids: list[str | None], phashes: list[str | None], **extra: list) -> pa.Table:
    n = len(ids)
    cols = {
        "uri": [f"img{i:02d}.jpg" for i in range(n)],
        "image_id": ids,
        "phash": phashes,
        "width": [100 + i for i in range(n)],  # later rows win: the keeper is predictable
        "height": [100] * n,
        "bytes": [1000] * n,
        "status": extra.get("status", ["accepted"] * n),
        "reason": extra.get("reason", [None] * n),
        "dup_of": [None] * n,
        "dup_of_uri": [None] * n,
    }
    return pa.table(cols, schema=pa.schema([IMAGES_SCHEMA.field(name) for name in cols]))


@pytest.mark.parametrize("hex_ids", [True, False])
def test_catalog_path_tells_ids_apart_by_their_full_value(hex_ids: bool) -> None:
    """``decide`` codes sha256 ids by their first 16 hex digits; ids sharing that prefix but not
    the rest are different images, and non-hex ids still group exactly (the heavier fallback)."""
    prefix = "ab" * 8
    ids = [prefix + "0" * 48, prefix + "1" * 48, prefix + "0" * 48, "cd" * 32, None, "cd" * 32]
    if not hex_ids:
        ids = [None if i is None else f"id-{i}" for i in ids]
    far = [
        "0000000000000000",
        "ffffffffffffffff",
        "00ff00ff00ff00ff",
        "0f0f0f0f0f0f0f0f",
        "3c3c3c3c3c3c3c3c",
        None,
    ]
    new, _ = decide(_catalog_rows(ids, far), radius=4)
    got = {r["uri"]: (r["status"], r["reason"], r["dup_of_uri"]) for r in new.to_pylist()}
    assert got == {
        "img00.jpg": ("duplicate", "exact_duplicate", "img02.jpg"),  # same full id, smaller
        "img01.jpg": ("accepted", None, None),  # shares only the 16-digit prefix
        "img02.jpg": ("accepted", None, None),
        "img03.jpg": ("duplicate", "exact_duplicate", "img05.jpg"),
        "img04.jpg": ("accepted", None, None),  # no id: never an exact duplicate
        "img05.jpg": ("accepted", None, None),
    }
    assert new.column("dup_of").to_pylist() == [ids[2], None, None, ids[5], None, None]


def test_catalog_path_decides_over_accepted_and_hash_duplicates_only() -> None:
    ids = ["aa" * 32, "aa" * 32, "aa" * 32, "aa" * 32]
    phashes = ["0000000000000000"] * 4
    status = ["accepted", "rejected", "duplicate", "duplicate"]
    reason = [None, "too_small", "exact_duplicate", "embedding_near_duplicate"]
    table = _catalog_rows(ids, phashes, status=status, reason=reason)
    new, groups = decide(table, radius=4)
    # the rejected row and the row another stage marked stay out; the old hash duplicate is
    # recomputed (it is larger, so it is now the keeper)
    assert new.column("uri").to_pylist() == ["img00.jpg", "img02.jpg"]
    assert new.column("status").to_pylist() == ["duplicate", "accepted"]
    assert groups.n_groups == 1


# ------------------------------------------------------------------------------ real catalog
def _status(catalog: Catalog) -> dict[str, tuple[str, str | None, str | None]]:
    t = read_images(catalog, columns=["uri", "status", "reason", "dup_of_uri"]).to_pylist()
    return {r["uri"]: (r["status"], r["reason"], r["dup_of_uri"]) for r in t}


def _by_name(status: dict, suffix: str) -> tuple[str, tuple[str, str | None, str | None]]:
    (uri,) = [u for u in status if u.endswith(suffix)]
    return uri, status[uri]


def test_apply_hash_dedup_on_imagededup_testdata(tmp_path: Path, imagededup_testdata: Path) -> None:
    catalog, cfg = Catalog(tmp_path / "cat"), CurateConfig()
    ingest(catalog, str(imagededup_testdata), cfg, "r1", client_or_address="sync")
    n_inputs = read_images(catalog, columns=["uri"]).num_rows
    before = {k: v for k, v in _status(catalog).items() if v[0] == "rejected"}
    counts = apply_hash_dedup(catalog, cfg.dedup, "r1")
    st = _status(catalog)

    base_uri, base = _by_name(st, "base_images/ukbench00120.jpg")
    _, resize = _by_name(st, "mixed_images/ukbench00120_resize.jpg")
    group_keeper = base[2] or base_uri
    assert resize[0] == "duplicate" and resize[2] == group_keeper  # base and its resize: one group
    assert st[group_keeper][0] == "accepted"
    assert _by_name(st, "mixed_images/ukbench09268_corrupt.jpg")[1][:2] == ("rejected", "decode_error")
    assert {k: v for k, v in st.items() if v[0] == "rejected"} == before  # rejections untouched
    _, hflip = _by_name(st, "mixed_images/ukbench00120_hflip.jpg")
    assert hflip[2] != group_keeper  # pHash is not flip invariant: left to the embedding dedup
    assert sum(int(c["count"]) for c in status_counts(catalog)) == n_inputs  # type: ignore[call-overload]
    n_dup = sum(v[0] == "duplicate" for v in st.values())
    assert n_dup == counts["exact_duplicate"] + counts["near_duplicate_phash"] == counts["changed"] > 0
    # a duplicate always points at an accepted keeper
    assert all(st[v[2]][0] == "accepted" for v in st.values() if v[0] == "duplicate")

    again = apply_hash_dedup(catalog, cfg.dedup, "r2")  # idempotent: nothing to write
    assert again["changed"] == 0 and again["images_version"] == counts["images_version"]


def _ingest_one(catalog: Catalog, folder: Path, name: str, img: Image.Image, run: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / name, quality=92)
    ingest(catalog, str(folder), CurateConfig(), run, client_or_address="sync")
    return next(u for u in _status(catalog) if u.endswith(name))


def test_keeper_moves_and_orphans_return_to_accepted(tmp_path: Path, imagededup_testdata: Path) -> None:
    catalog, cfg = Catalog(tmp_path / "cat"), HashDedupConfig()
    src = imagededup_testdata / "base_images" / "ukbench00120.jpg"
    photo = Image.open(src).convert("RGB")
    small = _ingest_one(catalog, tmp_path / "a", "small.jpg", photo.resize((320, 240)), "r1")
    mid = _ingest_one(catalog, tmp_path / "b", "mid.jpg", photo, "r2")
    apply_hash_dedup(catalog, cfg, "r2")
    assert _status(catalog)[small] == ("duplicate", "near_duplicate_phash", mid)

    big = _ingest_one(catalog, tmp_path / "c", "big.jpg", photo.resize((1280, 960)), "r3")
    counts = apply_hash_dedup(catalog, cfg, "r3")  # a higher-resolution copy arrives: keeper moves
    st = _status(catalog)
    assert st[big] == ("accepted", None, None)
    assert st[mid] == st[small] == ("duplicate", "near_duplicate_phash", big)
    assert counts["changed"] == 2  # mid (now a duplicate) and small (re-pointed); big was accepted

    # the keeper is rejected later (say a new quality rule): the group regroups around `mid`,
    # and once `mid` goes too, `small` is alone and back to accepted
    for gone, keeper in ((big, mid), (mid, None)):
        row = read_images(catalog).filter(pa.compute.equal(pa.compute.field("uri"), gone))
        row = row.set_column(row.schema.get_field_index("status"), "status", pa.array(["rejected"]))
        row = row.set_column(row.schema.get_field_index("reason"), "reason", pa.array(["too_blurry"]))
        upsert_images(catalog, row, "manual")
        apply_hash_dedup(catalog, cfg, "r4")
        st = _status(catalog)
        assert st[small] == (
            ("duplicate", "near_duplicate_phash", keeper) if keeper else ("accepted", None, None)
        )
        assert st[gone][:2] == ("rejected", "too_blurry")


# ------------------------------------------------------------------- generated copies, P/R
PHOTOMETRIC = (
    "resize_50",
    "jpeg_q30",
    "blur_2px",
    "contrast_-30",
    "grayscale",
    "brightness_+30",
    "watermark",
)


def test_precision_recall_on_generated_copies_of_real_photos(raw_photos: Path) -> None:
    """30 photos x 7 copy edits + 2 geometric edits, grouped at the default radius.

    Thresholds from docs/dedup-threshold.md (500 photos): at radius 6 resize, JPEG q30, blur,
    contrast and grayscale copies are found 100%, brightness 96.4%, watermark 98.4%; no pair of
    distinct photos is within 12 bits (0 of 2.1M pairs) -> recall >= 0.9, precision == 1 here."""
    paths = sorted(raw_photos.iterdir())[::16][:30]
    rows: list[tuple[str, str, str | None, int]] = []  # (uri, photo, phash, pixels)
    for path in paths:
        data = path.read_bytes()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        rows.append((str(path), path.name, pipeline_phash(data, str(path)), img.width * img.height * 4))
        for name in (*PHOTOMETRIC, *GEOMETRIC):
            rows.append((f"{path.name}/{name}", path.name, pipeline_phash(variant_bytes(img, name)), 1))
    rows = [r for r in rows if r[2] is not None]
    uris = np.array([r[0] for r in rows], dtype=object)
    g = find_duplicate_groups(
        image_ids=uris,  # all different bytes
        phashes=np.array([r[2] for r in rows], dtype=object),
        widths=np.array([r[3] for r in rows]),
        heights=np.ones(len(rows), dtype=np.int64),
        nbytes=np.zeros(len(rows), dtype=np.int64),
        uris=uris,
        radius=HashDedupConfig().phash_radius,
    )
    photo = np.array([r[1] for r in rows])
    assert (photo[g.keeper] == photo).all()  # precision: no group mixes two photos
    assert all(rows[k][0] == str(raw_photos / rows[k][1]) for k in np.unique(g.keeper[g.is_duplicate]))
    for kind in PHOTOMETRIC:
        sel = np.array([r[0].endswith("/" + kind) for r in rows])
        recall = g.is_duplicate[sel].mean()
        assert recall >= 0.9, (kind, recall)
    geometric = np.array([r[0].endswith(GEOMETRIC) for r in rows])
    assert g.is_duplicate[geometric].mean() <= 0.05  # known gap: flips/rotations are not caught
