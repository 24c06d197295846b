"""Evaluation-leak removal: listing benchmarks (folders and tars), bad paths, and a planted set of
copies of benchmark images (exact, resized, mirrored, re-compressed) among other photos."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.config import EmbedConfig, LeakConfig
from curation.embed import embed_arrays
from curation.geometric import VERIFIER_ID
from curation.leaks import apply_leak_removal, list_eval_set, parse_eval_set
from data_catalog.catalog import Catalog
from data_catalog.embeddings import write_embeddings
from data_catalog.image import open_image
from data_catalog.images import IMAGES_SCHEMA, read_images, upsert_images
from data_catalog.matches import MATCHES_SCHEMA
from data_catalog.matches import TABLE as MATCHES
from data_catalog.uris import UriReader
from pretrain.models.descriptors import load_descriptor

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = REPO / "assets" / "bootstrap-backbone"


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_list_eval_set_folder_and_tar_agree(tmp_path: Path) -> None:
    a, b = _jpeg(Image.new("RGB", (8, 8), "red")), _jpeg(Image.new("RGB", (8, 8), "blue"))
    root = _folder(tmp_path / "bench" / "test", {"cat/1.jpg": a, "dog/2.jpg": b, "dog/notes.txt": b"x"})
    tar_path = tmp_path / "bench.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "bench", arcname="bench")
    listed = list_eval_set("b", str(root))
    from_tar = list_eval_set("b", str(tar_path))
    assert listed.column("label").to_pylist() == from_tar.column("label").to_pylist() == ["cat", "dog"]
    assert listed.column("image_id").to_pylist() == [
        hashlib.sha256(a).hexdigest(),
        hashlib.sha256(b).hexdigest(),
    ]
    assert from_tar.column("image_id").to_pylist() == listed.column("image_id").to_pylist()
    assert from_tar.column("uri")[0].as_py() == f"{tar_path.resolve()}#bench/test/cat/1.jpg"
    with UriReader(wanted=from_tar.column("uri").to_pylist()) as reader:  # the uris read back
        assert reader.read(from_tar.column("uri")[1].as_py()) == b


def test_bad_eval_sets_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--eval-set x=.*nope does not exist"):
        list_eval_set("x", str(tmp_path / "nope"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="no images under"):
        list_eval_set("x", str(tmp_path / "empty"))
    (tmp_path / "file.csv").write_text("a,b")
    with pytest.raises(ValueError, match="neither a directory nor a tar"):
        list_eval_set("x", str(tmp_path / "file.csv"))
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="cannot read the tar"):
        list_eval_set("x", str(tmp_path / "broken.tar.gz"))
    for spec in ("cifar10", "=path", "a:b=path"):
        with pytest.raises(ValueError, match="expected NAME=PATH"):
            parse_eval_set(spec)
    assert parse_eval_set("cifar10=/d/c.tar.gz") == ("cifar10", "/d/c.tar.gz")


def test_planted_copies_of_benchmark_images_are_removed(tmp_path: Path, raw_photos: Path) -> None:
    photos = sorted(raw_photos.glob("*.JPEG"))[:14]
    imgs = [open_image(p.read_bytes()).convert("RGB") for p in photos]
    bench = {f"c{i % 2}/{p.name}": p.read_bytes() for i, p in enumerate(photos[:4])}
    root = _folder(tmp_path / "bench", bench)
    planted = {  # pool file -> the benchmark image it copies
        "exact.jpg": (photos[0].read_bytes(), photos[0].name),
        "half.jpg": (_jpeg(imgs[1].resize((imgs[1].width // 2, imgs[1].height // 2))), photos[1].name),
        "mirror.jpg": (_jpeg(imgs[2].transpose(Image.Transpose.FLIP_LEFT_RIGHT)), photos[2].name),
        "q40.jpg": (_jpeg(imgs[3], 40), photos[3].name),
    }
    others = {f"other{i}.jpg": p.read_bytes() for i, p in enumerate(photos[4:])}
    files = {**{k: v[0] for k, v in planted.items()}, **others}
    pool_dir = _folder(tmp_path / "pool", files)

    descriptor = load_descriptor(BOOTSTRAP)
    catalog = Catalog(str(tmp_path / "cat"))
    sizes = {n: open_image(d).size for n, d in files.items()}  # as ingest records them
    rows = [{"uri": str(pool_dir / n), "image_id": hashlib.sha256(d).hexdigest(), "status": "accepted",
             "width": sizes[n][0], "height": sizes[n][1], "bytes": len(d)} for n, d in files.items()]  # fmt: skip
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "t")
    vecs = embed_arrays(descriptor, [open_image(d) for d in files.values()], device="cpu")
    write_embeddings(catalog, descriptor.model_id, [str(r["image_id"]) for r in rows], vecs, "t")

    cfg = LeakConfig(threshold=0.938)  # the bootstrap class token's P >= 0.99 point (docs/copy-detection.md)
    out = apply_leak_removal(catalog, descriptor, {"bench": str(root)}, cfg, "r1", EmbedConfig(device="cpu"))
    got = {Path(r["uri"]).name: r for r in read_images(catalog).to_pylist()}
    for name, (_, source) in planted.items():
        assert got[name]["status"] == "rejected" and got[name]["reason"] == "eval_leak", name
        assert got[name]["dup_of_uri"].endswith(source)
        assert got[name]["detail"].startswith(
            f"bench: c{photos.index(raw_photos / source) % 2}/{source}, cosine "
        )
    assert all(got[n]["status"] == "accepted" for n in others)
    assert out["benchmarks"] == {"bench": {"eval_images": 4, "leaks": 4}} and out["changed"] == 4
    # again: nothing changes; a stricter threshold gives the weaker matches back (accepted)
    assert (
        apply_leak_removal(catalog, descriptor, {"bench": str(root)}, cfg, "r2", EmbedConfig(device="cpu"))[
            "changed"
        ]
        == 0
    )
    cos = {n: float(re.search(r"cosine ([0-9.]+)", got[n]["detail"]).group(1)) for n in planted}  # type: ignore[union-attr]
    assert cos["exact.jpg"] > 0.9999 and cos["mirror.jpg"] > 0.99  # the mirrored benchmark image matches
    strict = LeakConfig(threshold=0.9999, verify="none")  # cosine alone
    apply_leak_removal(catalog, descriptor, {"bench": str(root)}, strict, "r3", EmbedConfig(device="cpu"))
    got = {Path(r["uri"]).name: r for r in read_images(catalog).to_pylist()}
    assert got["exact.jpg"]["reason"] == "eval_leak"
    for name in (n for n in planted if cos[n] < 0.9999):
        assert (got[name]["status"], got[name]["reason"], got[name]["detail"]) == ("accepted", None, None)
    assert min(cos.values()) < 0.9999


def test_candidates_that_do_not_match_geometrically_stay_accepted(tmp_path: Path, raw_photos: Path) -> None:
    """With every pool image a candidate (threshold -1), geometric verification keeps only the real
    copies, edited ones included (crop, small rotation, mirror, caption band); cosine alone takes all."""
    photos = sorted(raw_photos.glob("*.JPEG"))[20:30]
    imgs = [open_image(p.read_bytes()).convert("RGB") for p in photos]
    bench = {f"c{i % 2}/{p.name}": p.read_bytes() for i, p in enumerate(photos[:5])}
    root = _folder(tmp_path / "bench", bench)
    w, h = imgs[0].size
    band = imgs[3].copy()
    band.paste((255, 255, 255), (0, band.height - band.height // 8, band.width, band.height))
    planted = {
        "crop.jpg": _jpeg(imgs[0].crop((w // 12, h // 12, w - w // 12, h - h // 12))),
        "rotated.jpg": _jpeg(imgs[1].rotate(5, resample=Image.Resampling.BICUBIC)),
        "mirror.jpg": _jpeg(imgs[2].transpose(Image.Transpose.FLIP_LEFT_RIGHT), 80),
        "caption.jpg": _jpeg(band),
    }
    others = {f"other{i}.jpg": p.read_bytes() for i, p in enumerate(photos[5:])}
    files = {**planted, **others}
    descriptor = load_descriptor(BOOTSTRAP)
    catalog = _catalog_of(tmp_path, _folder(tmp_path / "pool", files), files, descriptor)
    loose = {"threshold": -1.0, "verify_below": 1.0}
    out = apply_leak_removal(
        catalog, descriptor, {"bench": str(root)}, LeakConfig(**loose), "r1", EmbedConfig(device="cpu")
    )
    got = {Path(r["uri"]).name: r for r in read_images(catalog).to_pylist()}
    for name in planted:
        assert got[name]["reason"] == "eval_leak", (name, got[name])
        assert re.search(r", \d+ inliers", got[name]["detail"]), got[name]["detail"]
    assert "(mirrored)" in got["mirror.jpg"]["detail"]
    assert all(got[n]["status"] == "accepted" for n in others), [got[n]["detail"] for n in others]
    # a copy stops at its first verified candidate; every other pool image tries each benchmark image
    # among its k = 4 nearest vectors (an image and its mirror are two)
    assert out["geometric_checked"] > len(files) and out["geometric_vetoed"] >= len(others)
    assert out["geometric_checked"] - out["geometric_vetoed"] == len(planted)
    # each (pool image, benchmark image) match is stored once, under the verifier's id
    stored = catalog.read(MATCHES, MATCHES_SCHEMA)
    assert stored.num_rows == out["geometric_checked"]
    assert set(stored.column("verifier").to_pylist()) == {VERIFIER_ID}
    # without verification the same threshold takes every pool image
    unverified = LeakConfig(**loose, verify="none")
    out = apply_leak_removal(
        catalog, descriptor, {"bench": str(root)}, unverified, "r2", EmbedConfig(device="cpu")
    )
    assert out["leaks"] == len(files) and out["geometric_checked"] == 0


def test_a_copy_is_found_behind_a_nearer_benchmark_image(tmp_path: Path, raw_photos: Path) -> None:
    """A copy whose nearest benchmark image is another photo, with its own original second and both under
    the threshold: candidates from verify_from are tried best first, and the one that matches is the leak;
    with the candidates starting at the threshold it stays accepted."""
    photos = sorted(raw_photos.glob("*.JPEG"))[30:34]
    root = _folder(tmp_path / "bench", {f"c/{p.name}": p.read_bytes() for p in photos})
    img = open_image(photos[1].read_bytes()).convert("RGB")
    w, h = img.size
    files = {"crop.jpg": _jpeg(img.crop((w // 10, h // 10, w - w // 10, h - h // 10)))}
    descriptor = load_descriptor(BOOTSTRAP)
    # the copy's vector: cosine 0.70 to the wrong photo and 0.65 to its original, built in the plane of
    # the two plus a third direction
    bench = embed_arrays(descriptor, [open_image(p.read_bytes()) for p in photos], device="cpu")
    e1 = bench[0].astype(np.float64) / np.linalg.norm(bench[0])
    right = bench[1].astype(np.float64) / np.linalg.norm(bench[1])
    rho = float(right @ e1)
    e2 = (right - rho * e1) / np.linalg.norm(right - rho * e1)
    e3 = np.random.default_rng(0).standard_normal(e1.shape)
    e3 -= (e3 @ e1) * e1 + (e3 @ e2) * e2
    e3 /= np.linalg.norm(e3)
    beta = (0.65 - 0.70 * rho) / np.sqrt(1 - rho**2)
    x = 0.70 * e1 + beta * e2 + np.sqrt(1 - 0.70**2 - beta**2) * e3
    cos = bench.astype(np.float64) @ x / np.linalg.norm(bench, axis=1)
    assert np.argsort(-cos)[:2].tolist() == [0, 1] and 0.6 < cos[1] < cos[0] < 0.75, cos
    catalog = _catalog_of(tmp_path, _folder(tmp_path / "pool", files), files, descriptor, x[None])
    eval_sets, embed = {"bench": str(root)}, EmbedConfig(device="cpu")
    plain = {"mirror": False}  # the search over the benchmark images as they are
    out = apply_leak_removal(
        catalog, descriptor, eval_sets, LeakConfig(**plain, verify_from=None), "r1", embed, mirror=False
    )
    assert out["leaks"] == 0 and out["geometric_checked"] == 0
    out = apply_leak_removal(
        catalog, descriptor, eval_sets, LeakConfig(**plain, verify_from=0.6), "r2", embed, mirror=False
    )
    row = read_images(catalog).to_pylist()[0]
    assert out["leaks"] == 1 and out["verify_from"] == 0.6
    assert row["reason"] == "eval_leak" and row["dup_of_uri"].endswith(photos[1].name), row
    assert row["detail"].startswith(f"bench: c/{photos[1].name}, cosine {cos[1]:.4f}, ")
    assert (out["geometric_checked"], out["geometric_vetoed"]) == (2, 1)  # the nearer photo was vetoed


def _catalog_of(tmp_path: Path, pool_dir: Path, files: dict[str, bytes], descriptor, vectors=None) -> Catalog:  # type: ignore[no-untyped-def]
    """A catalog holding ``files`` as accepted images with their real sizes and copy vectors (or
    ``vectors``)."""
    catalog = Catalog(str(tmp_path / "cat"))
    sizes = {n: open_image(d).size for n, d in files.items()}
    rows = [{"uri": str(pool_dir / n), "image_id": hashlib.sha256(d).hexdigest(), "status": "accepted",
             "width": sizes[n][0], "height": sizes[n][1], "bytes": len(d)} for n, d in files.items()]  # fmt: skip
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "t")
    if vectors is None:
        vectors = embed_arrays(descriptor, [open_image(d) for d in files.values()], device="cpu")
    write_embeddings(catalog, descriptor.model_id, [str(r["image_id"]) for r in rows], vectors, "t")
    return catalog


def test_small_pool_images_are_decided_by_aligned_pixels(tmp_path: Path, raw_photos: Path) -> None:
    # CIFAR-sized benchmark and pool: a shifted, a mirrored and a recoloured 32 px copy are leaks (by
    # aligned correlation, named so in the row), other 32 px photos stay; small_side=0 turns it off.
    photos = [open_image(p.read_bytes()).convert("RGB") for p in sorted(raw_photos.glob("*.JPEG"))[:20]]
    small = [p.resize((32, 32), Image.Resampling.BICUBIC) for p in photos]
    root = _folder(tmp_path / "bench", {f"c/{i}.png": _png(small[i]) for i in range(4)})
    planted = {
        "shift.png": _png(photos[0].crop((8, 8, photos[0].width, photos[0].height)).resize((32, 32))),
        "mirror.png": _png(small[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "bright.png": _png(small[2].point(lambda v: min(255, int(v * 1.25)))),
    }
    files = {**planted, **{f"other{i}.png": _png(small[i]) for i in range(4, 20)}}
    descriptor = load_descriptor(BOOTSTRAP)
    catalog = _catalog_of(tmp_path, _folder(tmp_path / "pool", files), files, descriptor)
    out = apply_leak_removal(
        catalog, descriptor, {"b": str(root)}, LeakConfig(), "r1", EmbedConfig(device="cpu")
    )
    got = {Path(r["uri"]).name: r for r in read_images(catalog).to_pylist()}
    assert out["small_images"] == len(files)
    for name, source in zip(planted, ("c/0.png", "c/1.png", "c/2.png"), strict=True):
        assert got[name]["reason"] == "eval_leak" and got[name]["dup_of_uri"].endswith(source), name
        assert ", aligned correlation " in got[name]["detail"]
    assert all(got[n]["status"] == "accepted" for n in files if n.startswith("other"))
    off = LeakConfig(small_side=0, threshold=0.9999)  # by cosine alone, at a threshold only exact copies meet
    apply_leak_removal(catalog, descriptor, {"b": str(root)}, off, "r2", EmbedConfig(device="cpu"))
    got = {Path(r["uri"]).name: r for r in read_images(catalog).to_pylist()}
    assert got["shift.png"]["reason"] is None and got["bright.png"]["reason"] is None
    assert ", cosine " in got["mirror.png"]["detail"]  # the exact mirror still matches the mirrored query


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
