"""Near-duplicates by copy vectors: faiss search against numpy, the pairs, the keeper rule, the
catalog stage (incremental: a new image meets the old kept ones), and hash dedup's confirmation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.config import HashDedupConfig, SemanticDedupConfig
from curation.hashdedup import apply_hash_dedup
from curation.neardup import apply_semantic_dedup, group_pairs, near_duplicate_pairs, phash_confirmer
from curation.phash_confirm import candidate_row_pairs
from curation.vector_search import Search, choose_index, exact_search, ivf_nlist, search
from data_catalog.catalog import Catalog
from data_catalog.embeddings import write_embeddings
from data_catalog.images import IMAGES_SCHEMA, read_images, upsert_images

MODEL = "test-copy/planted@000000000000"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(n: int, dim: int, n_copies: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """n clustered unit vectors (structure like real descriptors: 50 blobs) + n_copies near copies
    (cosine ~0.95 to their source) appended; returns vectors and the planted (source, copy) pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    base = _unit(centres[rng.integers(0, 50, n)] + 0.9 * rng.standard_normal((n, dim)))
    src = rng.choice(n, n_copies, replace=False)
    copies = _unit(base[src] + 0.3 / np.sqrt(dim) * rng.standard_normal((n_copies, dim)))
    pairs = {(int(s), n + c) for c, s in enumerate(src)}
    return np.concatenate([base, copies]), pairs


def test_flat_search_equals_numpy_exact_search() -> None:
    x, _ = _planted(600, 32, 50, seed=0)
    sims, idx = search(x[:500], x[500:], 5, Search(index="flat"))
    ref_s, ref_i = exact_search(x[:500], x[500:], 5)
    assert np.allclose(sims, ref_s, atol=1e-5)
    assert (idx == ref_i).mean() > 0.99  # only exact ties may order differently


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_planted_pairs_exact_search_finds(kind: str) -> None:
    x, planted = _planted(4000, 64, 300, seed=1)
    cfg = Search(index=kind, nprobe=8, hnsw_ef_search=64)
    exact = near_duplicate_pairs(x, 0.8, 4, Search(index="flat"))
    got = near_duplicate_pairs(x, 0.8, 4, cfg)
    exact_set = set(zip(exact[0].tolist(), exact[1].tolist(), strict=True))
    got_set = set(zip(got[0].tolist(), got[1].tolist(), strict=True))
    assert planted <= exact_set  # the planted copies are all above 0.8
    assert len(got_set & exact_set) >= 0.98 * len(exact_set)
    assert got_set <= exact_set  # nothing below the threshold is invented


def test_float16_vectors_give_the_same_pairs() -> None:
    x, planted = _planted(1000, 48, 80, seed=2)
    i, j, s = near_duplicate_pairs(x.astype(np.float16), 0.8, 4, Search())
    assert planted <= set(zip(i.tolist(), j.tolist(), strict=True))
    assert (i < j).all() and (s >= 0.8).all()


def test_choose_index_auto_is_exact_up_to_exact_max_then_ivf() -> None:
    cfg = SemanticDedupConfig(exact_max=1000)
    assert choose_index(1000, 256, cfg) == "flat"
    assert choose_index(1001, 256, cfg) == "ivf"
    assert choose_index(10, 256, SemanticDedupConfig(index="hnsw")) == "hnsw"
    with pytest.raises(ValueError, match="unknown index 'lsh'"):
        choose_index(10, 8, Search(index="lsh"))
    assert ivf_nlist(1_000_000, cfg) == 4000 and ivf_nlist(100, cfg) == 2


def test_keeper_rule_is_hash_dedups_and_chains_are_one_group() -> None:
    # a ~ b ~ c (a and c not linked directly), d alone; c has the most pixels -> kept
    v = _unit(np.array([[1.0, 0, 0], [0.9, 0.3, 0], [0.75, 0.6, 0], [0, 0, 1]]))
    pixels = np.array([100, 100, 400, 900])
    nbytes = np.array([10, 20, 5, 1])
    uris = np.array(["a", "b", "c", "d"], dtype=object)
    i, j, _ = near_duplicate_pairs(v, 0.93, 3, Search())
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(0, 1), (1, 2)}
    g = group_pairs(v, i, j, pixels, nbytes, uris)
    assert g.keeper.tolist() == [2, 2, 2, 3]
    assert g.cosine[0] == pytest.approx(float(v[0] @ v[2]))  # to the keeper, though below 0.93
    # equal pixels: the larger file, then the smaller uri
    g = group_pairs(v, i, j, np.array([5, 5, 5, 5]), np.array([1, 3, 3, 0]), uris)
    assert g.keeper.tolist() == [1, 1, 1, 3]


# --------------------------------------------------------------------------------- catalog
def _row(
    uri: str, w: int, status: str = "accepted", reason: str | None = None, phash: str | None = None
) -> dict:
    return {"uri": uri, "image_id": f"id-{uri}", "width": w, "height": w, "bytes": w * 10,
            "phash": phash, "status": status, "reason": reason}  # fmt: skip


def _catalog(tmp_path, rows: list[dict], vectors: dict[str, np.ndarray]) -> Catalog:
    catalog = Catalog(str(tmp_path / "cat"))
    _add(catalog, rows, vectors)
    return catalog


def _add(catalog: Catalog, rows: list[dict], vectors: dict[str, np.ndarray]) -> None:
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "t")
    ids = [f"id-{u}" for u in vectors]
    if ids:
        write_embeddings(catalog, MODEL, ids, np.stack(list(vectors.values())), "t")


def _status(catalog: Catalog) -> dict[str, tuple]:
    t = read_images(catalog).to_pylist()
    return {r["uri"]: (r["status"], r["reason"], r["dup_of_uri"]) for r in t}


def test_catalog_stage_links_a_new_image_to_an_old_kept_one(tmp_path) -> None:
    rng = np.random.default_rng(3)
    photo, other = _unit(rng.standard_normal((2, 64)))
    copy = _unit((photo + 0.15 * _unit(rng.standard_normal((1, 64)))[0])[None])[0]
    catalog = _catalog(tmp_path, [_row("photo", 256), _row("other", 300)], {"photo": photo, "other": other})
    cfg = SemanticDedupConfig(threshold=0.9)
    first = apply_semantic_dedup(catalog, MODEL, cfg, "r1")
    assert first["near_duplicate_embedding"] == 0 and first["changed"] == 0

    # run 2 brings a smaller copy of the old photo: it is compared with the old kept image
    _add(catalog, [_row("copy-small", 128)], {"copy-small": copy})
    second = apply_semantic_dedup(catalog, MODEL, cfg, "r2")
    st = _status(catalog)
    assert st["copy-small"] == ("duplicate", "near_duplicate_embedding", "photo")
    assert st["photo"] == st["other"] == ("accepted", None, None)
    assert second["changed"] == 1
    detail = read_images(catalog).filter(pa.compute.field("uri") == "copy-small").column("detail")[0].as_py()
    assert detail.startswith("copy-descriptor cosine 0.9")

    # run 3 brings a larger copy: the keeper moves to it, both others point at it
    _add(catalog, [_row("copy-big", 1024)], {"copy-big": copy})
    apply_semantic_dedup(catalog, MODEL, cfg, "r3")
    st = _status(catalog)
    assert st["copy-big"] == ("accepted", None, None)
    assert st["photo"] == st["copy-small"] == ("duplicate", "near_duplicate_embedding", "copy-big")
    assert st["other"] == ("accepted", None, None)
    again = apply_semantic_dedup(catalog, MODEL, cfg, "r4")  # a function of the catalog
    assert again["changed"] == 0 and again["near_duplicate_embedding"] == 2


def test_rows_without_a_vector_are_left_alone_and_counted(tmp_path) -> None:
    v = _unit(np.eye(4)[:2] + 0.01)
    catalog = _catalog(tmp_path, [_row("a", 64), _row("b", 64), _row("c", 64)], {"a": v[0], "b": v[1]})
    out = apply_semantic_dedup(catalog, MODEL, SemanticDedupConfig(threshold=0.9), "r1")
    assert out["missing_vectors"] == 1 and out["with_vectors"] == 2
    assert _status(catalog)["c"] == ("accepted", None, None)


# ------------------------------------------------------------------------- pHash confirmation
def test_candidate_row_pairs_expand_values_over_distinct_files() -> None:
    # rows 0, 1 same file (exact), row 2 same hash other file, row 3 another hash linked to it
    ids = np.array([0, 0, 1, 2])
    hashes = np.array([0, 0, 0, 1])
    a, b = candidate_row_pairs(ids, hashes, np.array([[0, 1]]))
    got = {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist(), strict=True)}
    assert got == {(0, 2), (0, 3), (2, 3)}
    with pytest.raises(ValueError, match="lower dedup.phash_radius"):
        candidate_row_pairs(np.arange(10), np.zeros(10, np.int64), np.empty((0, 2)), max_pairs=10)


def test_hash_dedup_keeps_pHash_twins_apart_when_copy_vectors_disagree(tmp_path) -> None:
    # two different small photos with the same pHash, and a byte copy of the first
    rng = np.random.default_rng(4)
    a, b = _unit(rng.standard_normal((2, 32)))
    rows = [_row("a", 32, phash="8f3a00ff12345678"), _row("b", 32, phash="8f3a00ff12345679"),
            {**_row("a-copy", 32, phash="8f3a00ff12345678"), "image_id": "id-a"}]  # fmt: skip
    catalog = _catalog(tmp_path, rows, {"a": a, "b": b})
    plain = HashDedupConfig()
    confirm = phash_confirmer(catalog, MODEL, 0.9, plain.phash_radius, small_side=64, small_radius=0)
    counts = apply_hash_dedup(catalog, plain, "r1", confirm=confirm)
    st = _status(catalog)
    assert st["b"] == ("accepted", None, None)  # distinct despite 1 bit of pHash
    assert st["a-copy"][:2] == ("duplicate", "exact_duplicate")  # same bytes need no confirmation
    assert counts["unconfirmed"] == 1
    # without vectors, the size rule decides: 32 px images link only at distance 0
    no_vectors = phash_confirmer(catalog, None, 0.9, plain.phash_radius, small_side=64, small_radius=0)
    apply_hash_dedup(catalog, plain, "r2", confirm=no_vectors)
    assert _status(catalog)["b"] == ("accepted", None, None)
    # unconfirmed (the old behaviour): b joins a's group
    apply_hash_dedup(catalog, plain, "r3")
    assert _status(catalog)["b"][:2] == ("duplicate", "near_duplicate_phash")


def test_hash_dedup_leaves_semantic_duplicates_to_their_stage(tmp_path) -> None:
    rng = np.random.default_rng(5)
    x = _unit(rng.standard_normal((1, 16)))[0]
    rows = [_row("big", 512, phash="0000000000000000"), _row("small", 128, phash="ffffffffffffffff")]
    catalog = _catalog(tmp_path, rows, {"big": x, "small": x})
    apply_semantic_dedup(catalog, MODEL, SemanticDedupConfig(threshold=0.9), "r1")
    assert _status(catalog)["small"] == ("duplicate", "near_duplicate_embedding", "big")
    out = apply_hash_dedup(catalog, HashDedupConfig(), "r2")
    assert out["changed"] == 0
    assert _status(catalog)["small"] == ("duplicate", "near_duplicate_embedding", "big")


@pytest.mark.gpu
def test_gpu_and_cpu_searches_agree() -> None:
    from curation.vector_search import gpu_count

    if gpu_count() == 0:
        pytest.skip("faiss sees no GPU (faiss-cpu build or no CUDA device)")
    x, planted = _planted(20_000, 64, 500, seed=6)
    for kind in ("flat", "ivf"):
        cpu = near_duplicate_pairs(x, 0.8, 4, Search(index=kind, gpu=False))
        gpu = near_duplicate_pairs(x, 0.8, 4, Search(index=kind, gpu=True))
        cpu_set = set(zip(cpu[0].tolist(), cpu[1].tolist(), strict=True))
        gpu_set = set(zip(gpu[0].tolist(), gpu[1].tolist(), strict=True))
        assert planted <= cpu_set and len(cpu_set ^ gpu_set) <= 0.01 * len(cpu_set), kind


def _scene_catalog(tmp_path, photos: list, crop: Path, seed: int) -> Catalog:  # type: ignore[no-untyped-def]
    """A catalog of ``photos`` and ``crop`` (saved here: the first photo cropped by 10% per side), their
    vectors all about cosine 0.95 of each other, as the descriptor puts different photos of one scene."""
    from PIL import Image

    with Image.open(photos[0]) as img:
        w, h = img.size
        img.convert("RGB").crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(crop, quality=85)
    files = [*photos, crop]
    rng = np.random.default_rng(seed)
    centre = _unit(rng.standard_normal((1, 64)))[0]
    noise = _unit(rng.standard_normal((len(files), 64)))
    vectors = {str(f): _unit((centre + 0.23 * n)[None])[0] for f, n in zip(files, noise, strict=True)}
    rows = []
    for f in files:
        with Image.open(f) as img:
            rows.append({**_row(str(f), 0), "width": img.width, "height": img.height})
    cos = (np.stack(list(vectors.values())) @ np.stack(list(vectors.values())).T)[
        np.triu_indices(len(files), 1)
    ]
    assert ((cos > 0.9) & (cos < 0.99)).all()
    return _catalog(tmp_path, rows, vectors)


def test_links_under_verify_below_need_a_geometric_match(tmp_path, raw_photos) -> None:  # type: ignore[no-untyped-def]
    """Three real photos and a cropped copy of the first, all four vectors at cosine ~0.95 of each
    other (as the descriptor puts different photos of one scene): with geometric verification only
    the copy is linked; cosine alone links everything into one group."""
    photos = sorted(raw_photos.glob("*.JPEG"))[40:43]
    catalog = _scene_catalog(tmp_path, photos, tmp_path / "crop.jpg", seed=0)
    out = apply_semantic_dedup(catalog, MODEL, SemanticDedupConfig(threshold=0.9), "r1")
    st = _status(catalog)
    assert st[str(tmp_path / "crop.jpg")] == ("duplicate", "near_duplicate_embedding", str(photos[0]))
    assert all(st[str(p)][0] == "accepted" for p in photos)
    assert out["near_duplicate_embedding"] == 1 and out["geometric_vetoed"] == 5  # 6 links, 1 verified
    out = apply_semantic_dedup(catalog, MODEL, SemanticDedupConfig(threshold=0.9, verify="none"), "r2")
    assert out["near_duplicate_embedding"] == 3 and out["geometric_vetoed"] == 0


def test_pairs_from_verify_from_link_only_when_they_match_and_the_matches_are_stored(
    tmp_path, raw_photos
) -> None:  # type: ignore[no-untyped-def]
    """Four real photos and a cropped copy of the first, all at cosine ~0.95, under a cosine-alone
    threshold of 0.99: verify_from 0.9 makes them candidates and only the copy verifies. The matches
    are stored in the catalog: after the files are gone (unreadable, so a fresh verification could not
    link anything), the next run reuses them and decides the same."""
    import shutil

    from curation.geometric import VERIFIER_ID
    from data_catalog.matches import MATCHES_SCHEMA, TABLE

    photos = []
    for p in sorted(raw_photos.glob("*.JPEG"))[40:44]:
        photos.append(tmp_path / "pool" / p.name)
        photos[-1].parent.mkdir(exist_ok=True)
        shutil.copy(p, photos[-1])
    catalog = _scene_catalog(tmp_path, photos, tmp_path / "pool" / "crop.jpg", seed=1)

    alone = apply_semantic_dedup(catalog, MODEL, SemanticDedupConfig(threshold=0.99, verify_from=None), "r0")
    assert alone["near_duplicate_embedding"] == 0 and alone["candidate_pairs"] == 0
    cfg = SemanticDedupConfig(threshold=0.99, verify_from=0.9)
    out = apply_semantic_dedup(catalog, MODEL, cfg, "r1")
    st = _status(catalog)
    crop = str(tmp_path / "pool" / "crop.jpg")
    assert st[crop] == ("duplicate", "near_duplicate_embedding", str(photos[0]))
    assert all(st[str(p)][0] == "accepted" for p in photos)
    assert out["verify_from"] == 0.9 and out["pairs_above_threshold"] == 0
    assert out["candidate_pairs"] == out["geometric_checked"] > 1 and out["pairs_linked"] == 1
    assert out["geometric_vetoed"] == out["candidate_pairs"] - 1
    detail = {r["uri"]: r["detail"] for r in read_images(catalog).to_pylist()}[crop]
    assert detail.endswith("to the kept image (matched geometrically)"), detail
    stored = catalog.read(TABLE, MATCHES_SCHEMA)
    assert stored.num_rows == out["geometric_checked"]
    assert set(stored.column("verifier").to_pylist()) == {VERIFIER_ID}

    shutil.rmtree(tmp_path / "pool")
    again = apply_semantic_dedup(catalog, MODEL, cfg, "r2")
    assert again["near_duplicate_embedding"] == 1 and again["changed"] == 0
    assert catalog.read(TABLE, MATCHES_SCHEMA).num_rows == stored.num_rows  # nothing verified again
    # with verification off, verify_from has no effect: the cosine alone decides at the threshold
    off = apply_semantic_dedup(catalog, MODEL, cfg.model_copy(update={"verify": "none"}), "r3")
    assert off["candidate_pairs"] == 0 and off["near_duplicate_embedding"] == 0
