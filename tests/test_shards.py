"""Dataset versions as webdataset shards: what the tars hold, sizes, encoding, tar-member sources."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds
from PIL import Image, ImageOps

from curation.dataset_version import create_dataset_version, order_selection
from curation.shards import encode_image, shard_urls, verify_dataset
from data_catalog.catalog import Catalog
from data_catalog.image import open_image
from data_catalog.images import IMAGES_SCHEMA, upsert_images
from data_catalog.shard_index import read_index
from data_catalog.uris import UriReader, split_tar_uri


def image_row(uri: str, data: bytes, status: str = "accepted") -> dict:
    """An images-table row for real image bytes (what ingest writes, without the quality measures)."""
    now = datetime.now(UTC)
    with Image.open(io.BytesIO(data)) as img:
        size, fmt, mode = img.size, img.format, img.mode
    row = dict(
        uri=uri, image_id=hashlib.sha256(data).hexdigest(), source="test", bytes=len(data),
        width=size[0], height=size[1], format=fmt, mode=mode, status=status, ingested_at=now, updated_at=now,
    )  # fmt: skip
    return {k: row.get(k) for k in IMAGES_SCHEMA.names}


def build_catalog(
    root: Path, imagenette_dir: Path, raw_photos: Path, n_tar: int = 10
) -> tuple[Catalog, dict]:
    """60 real images: 40 Imagenette files, 10 raw photos, ``n_tar`` Imagenette files as tar members.

    Returns the catalog and ``{image_id: source bytes}`` of the accepted images.
    """
    jpgs = sorted(imagenette_dir.rglob("*.JPEG"))
    files = jpgs[:40] + sorted(raw_photos.iterdir())[:10]
    rows = [image_row(str(p), p.read_bytes()) for p in files]
    tar_path = root / "sources" / "part-000.tar"
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w") as tar:
        for p in jpgs[100 : 100 + n_tar]:
            tar.add(p, arcname=f"imgs/{p.name}")
            rows.append(image_row(f"{tar_path}#imgs/{p.name}", p.read_bytes()))
    rejected = jpgs[200]
    rows.append(image_row(str(rejected), rejected.read_bytes(), status="rejected"))
    catalog = Catalog(root / "catalog")
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "test-run")
    sources = {r["image_id"]: r for r in rows if r["status"] == "accepted"}
    return catalog, sources


def samples(urls: list[str]) -> list[dict]:
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, imagenette_dir: Path, raw_photos: Path):
    root = tmp_path_factory.mktemp("shards")
    catalog, sources = build_catalog(root, imagenette_dir, raw_photos)
    record = create_dataset_version(catalog, "full", shard_max_bytes=400_000)
    return catalog, sources, record


def _source_bytes(uri: str) -> bytes:
    with UriReader([uri]) as reader:
        return reader.read(uri)


def test_shards_hold_exactly_the_accepted_images(built) -> None:
    catalog, sources, record = built
    got = samples(shard_urls(record))
    assert sorted(s["__key__"] for s in got) == sorted(sources)  # all accepted, no rejected, no repeats
    assert record.num_samples == len(sources) == 60
    for s in got:
        assert "." not in s["__key__"]
        meta = json.loads(s["json"])
        src = sources[s["__key__"]]
        assert meta["image_id"] == s["__key__"] and meta["uri"] == src["uri"]
        assert (meta["width"], meta["height"]) == (src["width"], src["height"])
        assert s["jpg"] == _source_bytes(src["uri"])  # byte-identical, tar members included
        assert meta["reencoded"] is False


def test_shard_sizes_index_and_verify(built) -> None:
    catalog, _, record = built
    index = read_index(record.index_uri)
    assert record.num_shards == len(index.shards) > 2  # the 400 kB target forced several shards
    assert (
        index.brace_pattern == record.shard_pattern == f"full-v1-{{000000..{record.num_shards - 1:06d}}}.tar"
    )
    assert [s.url for s in index.shards] == [f"full-v1-{i:06d}.tar" for i in range(record.num_shards)]
    assert list(wds.shardlists.expand_urls(f"{record.shards_uri}/{record.shard_pattern}")) == shard_urls(
        record
    )
    for entry, url in zip(index.shards, shard_urls(record), strict=True):
        data = Path(url).read_bytes()
        assert entry.bytes is not None and len(data) == entry.bytes <= 400_000
        assert hashlib.md5(data).hexdigest() == entry.md5
        assert len(samples([url])) == entry.num_samples
    assert index.total_bytes == record.total_bytes
    assert (index.name, index.version, index.num_samples) == ("full", 1, 60)
    assert verify_dataset(catalog, "full", 1)["ok"]


def test_verify_detects_a_corrupt_shard(built, tmp_path: Path) -> None:
    catalog, _, _ = built
    record = create_dataset_version(catalog, "corrupt", max_samples=5)
    url = shard_urls(record)[0]
    data = bytearray(Path(url).read_bytes())
    data[600] ^= 0xFF  # inside the first image
    Path(url).chmod(0o644)
    Path(url).write_bytes(bytes(data))
    report = verify_dataset(catalog, "corrupt")
    assert not report["ok"] and "md5" in report["problems"][0]


def test_verify_reports_a_broken_index(built) -> None:
    catalog, _, _ = built
    record = create_dataset_version(catalog, "badindex", max_samples=2)
    Path(record.index_uri).chmod(0o644)
    Path(record.index_uri).write_text('{"shards": [')  # cut short
    report = verify_dataset(catalog, "badindex")
    assert not report["ok"] and "unreadable index" in report["problems"][0]


def test_same_inputs_same_shards_and_seeded_samples(built) -> None:
    catalog, sources, _ = built
    a = create_dataset_version(catalog, "sample", max_samples=20, seed=1, shard_max_samples=6)
    b = create_dataset_version(catalog, "sample", max_samples=20, seed=1, shard_max_samples=6)
    c = create_dataset_version(catalog, "sample", max_samples=20, seed=2, shard_max_samples=6)
    ia, ib = read_index(a.index_uri), read_index(b.index_uri)
    assert [s.md5 for s in ia.shards] == [s.md5 for s in ib.shards]  # byte-identical shards
    assert [s.num_samples for s in ia.shards] == [6, 6, 6, 2]
    keys_a = [s["__key__"] for s in samples(shard_urls(a))]
    keys_c = [s["__key__"] for s in samples(shard_urls(c))]
    assert len(set(keys_a)) == 20 and set(keys_a) <= set(sources)
    assert set(keys_a) != set(keys_c)
    assert keys_a != sorted(keys_a)  # shuffled, not in image_id order


def test_max_samples_is_a_uniform_sample() -> None:
    """Each of 100 ids is drawn with probability 10/100: 2,000 seeds give ~200 draws each."""
    table = pa.table({"image_id": [f"{i:04x}" for i in range(100)], "uri": [f"u{i}" for i in range(100)]})
    counts = np.zeros(100, dtype=int)
    for seed in range(2000):
        picked, merged = order_selection(table, 10, seed)
        assert picked.num_rows == 10 and merged == 0
        counts[[int(x, 16) for x in picked.column("image_id").to_pylist()]] += 1
    assert counts.sum() == 20_000
    assert counts.min() > 140 and counts.max() < 260, (counts.min(), counts.max())  # 4+ sigma bounds


def test_selection_extra_columns_and_duplicate_ids(built) -> None:
    catalog, sources, _ = built
    ids = sorted(sources)[:8]
    selection = pa.table(
        {
            "image_id": ids + ids[:2],  # two ids twice, under other uris
            "uri": [sources[i]["uri"] for i in ids] + ["~/zz/a.jpg", "~/zz/b.jpg"],
            "cluster_id": list(range(8)) + [99, 99],
        }
    )
    record = create_dataset_version(catalog, "clustered", selection=selection, parents=["full:v1"])
    got = {s["__key__"]: json.loads(s["json"]) for s in samples(shard_urls(record))}
    assert sorted(got) == ids
    for i, image_id in enumerate(ids):
        assert got[image_id]["cluster_id"] == i  # the lowest uri of a duplicated id is the one kept
    assert read_index(record.index_uri).duplicate_ids_merged == 2


def _rotated_jpeg(photo: Path) -> bytes:
    with Image.open(photo) as img:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_reencode_max_side_orientation_and_modes(tmp_path: Path, raw_photos: Path) -> None:
    photo = sorted(p for p in raw_photos.iterdir() if Image.open(p).size[0] > 300)[0]
    with Image.open(photo) as img:
        rgb = img.convert("RGB")
    variants = {"rotated.jpg": _rotated_jpeg(photo)}
    for name, converted, fmt in (
        ("cmyk.jpg", rgb.convert("CMYK"), "JPEG"),
        ("alpha.png", rgb.convert("RGBA"), "PNG"),
    ):
        buf = io.BytesIO()
        converted.save(buf, fmt)
        variants[name] = buf.getvalue()
    rows = []
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        rows.append(image_row(str(tmp_path / name), data))
    catalog = Catalog(tmp_path / "catalog")
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "r")
    record = create_dataset_version(catalog, "small", reencode_max_side=64, jpeg_quality=85)
    by_uri = {json.loads(s["json"])["uri"]: s for s in samples(shard_urls(record))}
    for name in variants:
        s = by_uri[str(tmp_path / name)]
        meta = json.loads(s["json"])
        ext = "jpg" if name.endswith(".jpg") else "png"  # JPEG sources stay JPEG, PNG ones PNG (lossless)
        with Image.open(io.BytesIO(s[ext])) as img:
            assert img.format == ("JPEG" if ext == "jpg" else "PNG") and img.mode == "RGB"
            assert max(img.size) == 64 and img.size == (meta["width"], meta["height"])
        assert meta["reencoded"] is True
    w, h = rgb.size
    rotated = json.loads(by_uri[str(tmp_path / "rotated.jpg")]["json"])
    assert (rotated["width"] > rotated["height"]) == (h > w)  # EXIF orientation 6 swapped the sides


def test_draft_reencode_matches_a_full_decode(raw_photos: Path) -> None:
    """The DCT draft shortcut gives the image a full decode + LANCZOS resize gives (reference)."""
    photo = max(raw_photos.iterdir(), key=lambda p: max(Image.open(p).size))
    data = photo.read_bytes()
    out = encode_image(data, reencode_max_side=200)
    with Image.open(io.BytesIO(data)) as img:
        full = ImageOps.exif_transpose(img).convert("RGB")
    reference = full.resize((out.width, out.height), Image.Resampling.LANCZOS)
    assert max(full.size) >= 1000 and max(out.width, out.height) == 200
    buf = io.BytesIO()
    reference.save(buf, "JPEG", quality=90)

    def error(jpeg: bytes) -> float:
        with Image.open(io.BytesIO(jpeg)) as img:
            return float(np.abs(np.asarray(img, dtype=float) - np.asarray(reference, dtype=float)).mean())

    assert error(out.data) < error(buf.getvalue()) + 1.0  # the draft adds < 1 grey level to JPEG's own loss


def test_encode_image_rescales_16_bit_and_flattens_alpha() -> None:
    ramp = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) % 256 * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")  # a 16-bit greyscale ramp 0..65535
    out = encode_image(buf.getvalue())
    assert out.reencoded and out.ext == "png"
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.mode == "RGB"
        arr = np.asarray(img, dtype=int)
    assert (arr[0, :, 0] == np.arange(256)).all()  # rescaled exactly (lossless), not clipped to white
    transparent = Image.new("RGBA", (20, 10), (0, 255, 0, 0))  # green hidden under alpha 0
    buf = io.BytesIO()
    transparent.save(buf, "PNG")
    for flat in (encode_image(buf.getvalue()), encode_image(buf.getvalue(), reencode_max_side=5)):
        assert flat.reencoded and flat.ext == "png"
        with Image.open(io.BytesIO(flat.data)) as img:
            assert img.mode == "RGB" and np.asarray(img).min() == 255  # transparent -> white, not green


def test_formats_kept_only_where_plain_pil_gives_the_image(imagededup_testdata: Path) -> None:
    """Real files of many formats: bytes are kept only for RGB/L JPEG and PNG without alpha and
    with no EXIF rotation; whatever is stored, ``PIL.Image.open(...).convert("RGB")`` of it (what
    webdataset's ``decode("pil")`` does) is the opener's image of the source, at the same size."""
    seen: dict[str, set[bool]] = {}
    for path in sorted(imagededup_testdata.rglob("*")):
        if not path.is_file() or "corrupt" in path.name or path.name == "LICENSE" or path.suffix == ".svg":
            continue
        data = path.read_bytes()
        out = encode_image(data)
        with Image.open(io.BytesIO(data)) as src:
            fmt, mode, rotated = src.format, src.mode, src.getexif().get(0x0112, 1) not in (0, 1)
        plain = fmt in ("JPEG", "PNG") and mode in ("RGB", "L") and not rotated
        assert out.reencoded is not plain, (path.name, fmt, mode, rotated)
        assert out.ext == ("jpg" if fmt == "JPEG" else "png")
        assert (out.data == data) is plain
        with Image.open(io.BytesIO(out.data)) as img:
            stored = np.asarray(img.convert("RGB"), dtype=float)
        want = np.asarray(open_image(data), dtype=float)
        assert stored.shape == want.shape == (out.height, out.width, 3), path.name
        assert np.abs(stored - want).mean() < (1.5 if out.ext == "jpg" and out.reencoded else 1e-9), path.name
        seen.setdefault(fmt or "", set()).add(out.reencoded)
    # re-encoded: the RGBA png, the GIF (palette), WEBP, TIFF, PPM/PGM/PBM, EXIF-rotated JPEGs
    assert seen["JPEG"] == {True, False} and seen["PNG"] == {True}
    assert {"GIF", "WEBP", "TIFF", "PPM"} <= set(seen) and all(
        seen[f] == {True} for f in ("GIF", "WEBP", "TIFF")
    )


def test_tar_member_uris(tmp_path: Path, imagenette_dir: Path) -> None:
    assert split_tar_uri("/a/b.tar#x/y.jpg") == ("/a/b.tar", "x/y.jpg")
    assert split_tar_uri("s3://bk/p#1/s.tar.gz#m#1.jpg") == ("s3://bk/p#1/s.tar.gz", "m#1.jpg")
    assert split_tar_uri("/a/photo#1.jpg") is None
    files = sorted(imagenette_dir.rglob("*.JPEG"))[:3]
    for mode, name in (("w", "plain.tar"), ("w:gz", "packed.tar.gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            for p in files:
                tar.add(p, arcname=f"d/{p.name}")
    uris = [f"{tmp_path / name}#d/{p.name}" for name in ("plain.tar", "packed.tar.gz") for p in files]
    with UriReader(uris) as reader:
        for uri in reversed(uris):
            assert (
                reader.read(uri) == Path(imagenette_dir.rglob(uri.rsplit("/", 1)[1]).__next__()).read_bytes()
            )
        assert len(reader.tars) == 2  # each tar opened (scanned) once
        with pytest.raises(FileNotFoundError, match="not found in tar"):
            reader.read(f"{tmp_path / 'plain.tar'}#d/missing.jpg")
    plain = [u for u in uris if ".tar#" in u]
    with UriReader(plain, max_open=1) as reader:  # eviction: a closed source reopens on demand
        source = reader._tar(str(tmp_path / "plain.tar"))
        assert source.read(f"d/{files[1].name}") == files[1].read_bytes() and source.file is not None
        reader._tar(str(tmp_path / "packed.tar.gz"))
        assert source.file is None and source.read(f"d/{files[0].name}") == files[0].read_bytes()


def test_pretrain_reader_opens_the_version(built) -> None:
    """The training engine's reader (pretrain.data) resolves ``NAME:vN`` to the same shards."""
    pretrain_data = pytest.importorskip("pretrain.data")
    catalog, _, record = built
    shards, meta = pretrain_data.open_dataset(catalog.root, "full:v1")
    assert [s.url for s in shards] == shard_urls(record)
    assert sum(s.num_samples for s in shards) == record.num_samples
    assert meta["version"] == 1
