"""Robust decoding: every kind of bad or unusual input, as real files, becomes the right record."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from curation.config import CurateConfig, FilterConfig
from curation.decode import compute_phash, decode_record, luma_stats, make_thumbnail
from curation.filters import apply_filters
from curation.ingest import process_partition
from curation.sources import list_source
from data_catalog.image import open_image
from data_catalog.images import Reason

MAX_PX = CurateConfig().ingest.max_pixels


def _photo(size: tuple[int, int] = (320, 240), seed: int = 0) -> np.ndarray:
    """A textured RGB array (smooth blobs + noise), so filters accept it. Shape (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 17.0 + seed) * np.cos(yy / 11.0)
    rgb = np.stack([base, base[::-1], 255 - base], axis=-1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _decode(path: Path, **kw: object):
    return decode_record(str(path), path.read_bytes(), kw.pop("max_pixels", MAX_PX), **kw)  # type: ignore[arg-type]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, streamed through zlib (tiny on disk)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def jpeg_bytes() -> bytes:
    return _encode(Image.fromarray(_photo()), "JPEG", quality=90)


def test_good_jpeg_record(tmp_path: Path, jpeg_bytes: bytes) -> None:
    path = tmp_path / "ok.jpg"
    path.write_bytes(jpeg_bytes)
    rec = _decode(path)
    assert rec.reason is None and rec.format == "JPEG" and rec.mode == "RGB"
    assert (rec.width, rec.height) == (320, 240) and rec.bytes == len(jpeg_bytes)
    assert len(rec.image_id or "") == 64 and len(rec.phash or "") == 16
    assert 0 <= (rec.mean_luma or -1) <= 255 and (rec.luma_std or 0) > 8 and (rec.sharpness or 0) > 0
    assert apply_filters(rec, FilterConfig()) is None


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.97])
def test_truncated_jpeg_is_decode_error(tmp_path: Path, jpeg_bytes: bytes, fraction: float) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes[: int(len(jpeg_bytes) * fraction)])
    rec = _decode(path)
    assert rec.reason == Reason.DECODE_ERROR and "truncated" in (rec.detail or "")


def test_corrupt_jpeg_is_decode_error(tmp_path: Path, jpeg_bytes: bytes) -> None:
    rng = np.random.default_rng(1)
    garbage = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (tmp_path / "body.jpg").write_bytes(jpeg_bytes[:600] + garbage)  # valid header, garbage scan
    (tmp_path / "noise.jpg").write_bytes(garbage)  # no header at all, but claims to be a JPEG
    for name in ("body.jpg", "noise.jpg"):
        rec = _decode(tmp_path / name)
        assert rec.reason == Reason.DECODE_ERROR, (name, rec)
        assert rec.detail


def test_empty_text_svg_pdf(tmp_path: Path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is a text file, not a photo\n" * 20)
    (tmp_path / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><rect width="9"/></svg>')
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n")
    assert _decode(tmp_path / "zero.jpg").reason == Reason.EMPTY_FILE
    for name in ("notes.jpg", "logo.svg", "doc.pdf"):
        assert _decode(tmp_path / name).reason == Reason.NOT_AN_IMAGE, name


def test_read_error_record() -> None:
    rec = decode_record("/nope/x.jpg", FileNotFoundError("gone"), MAX_PX)
    assert rec.reason == Reason.READ_ERROR and "gone" in (rec.detail or "") and rec.image_id is None


def test_wrong_extension_decodes_by_content(tmp_path: Path, jpeg_bytes: bytes) -> None:
    path = tmp_path / "actually_jpeg.png"
    path.write_bytes(jpeg_bytes)
    rec = _decode(path)
    assert rec.reason is None and rec.format == "JPEG"


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(_encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG"))
    rec = _decode(path)
    assert rec.reason is None and rec.mode == "CMYK" and rec.format == "JPEG"
    assert apply_filters(rec, FilterConfig()) is None


def test_palette_transparency_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (200, 100), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 100, 100))  # left half red, right half index 0 = transparent black
    path = tmp_path / "pal.png"
    path.write_bytes(_encode(img, "PNG", transparency=0))
    rec = _decode(path)
    assert rec.reason is None and rec.mode == "P"
    thumb = make_thumbnail(Image.open(path), 64)
    right = np.asarray(thumb)[:, -10:]
    assert right.min() >= 250, "transparent pixels must become white, not black"


def test_la_and_rgba_composited_on_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black
    la = Image.new("LA", (64, 64), (0, 0))
    for img in (rgba, la):
        assert np.asarray(make_thumbnail(img, 32)).min() == 255


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (128, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # uint16 -> mode I;16, saved as a 16-bit PNG
    rec = _decode(path)
    assert rec.reason is None and rec.mode.startswith("I")  # type: ignore[union-attr]
    assert 110 < (rec.mean_luma or 0) < 145, "a 0..65535 ramp must average mid-grey, not clip to white"
    assert (rec.luma_std or 0) > 60


def test_exif_orientation_swaps_width_height(tmp_path: Path) -> None:
    img = Image.fromarray(_photo((300, 150)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_encode(img, "JPEG", exif=exif.tobytes()))
    rec = _decode(path)
    assert (rec.width, rec.height) == (150, 300)
    thumb = make_thumbnail(open_image(path.read_bytes()), 64)
    assert thumb.size[0] < thumb.size[1]


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (96, 96), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].paste((255, 255, 255), (0, 0, 48, 96))
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    rec = _decode(path)
    # first frame: half white (luma 255) + half red (luma 76)
    assert rec.reason is None and rec.format == "GIF"
    assert rec.mean_luma == pytest.approx((255 + 76) / 2, abs=4)


def test_animated_webp_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 255, 255), (0, 0, 0))]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    rec = _decode(path)
    assert rec.reason is None and rec.format == "WEBP" and rec.mean_luma == pytest.approx(255, abs=1)


def test_decompression_bomb_beyond_pil_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bilevel_png(30000, 30000))  # 900 Mpx declared, ~110 kB on disk
    assert path.stat().st_size < 1_000_000
    rec = _decode(path)
    assert rec.reason == Reason.TOO_MANY_PIXELS and rec.detail


def test_pixel_cap_checked_from_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_bilevel_png(5000, 4000))  # 20 Mpx: under PIL's limit, over our cap below

    def no_load(self: Image.Image) -> None:
        raise AssertionError("pixels must not be decoded above max_pixels")

    monkeypatch.setattr(Image.Image, "load", no_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_load)
    rec = _decode(path, max_pixels=10_000_000)
    assert rec.reason == Reason.TOO_MANY_PIXELS
    assert (rec.width, rec.height) == (5000, 4000) and "20000000" in (rec.detail or "")


def test_compute_phash_matches_imagehash(imagededup_testdata: Path) -> None:
    """Reference equivalence: bit-identical to imagehash.phash on real images in their own modes
    (RGB, RGBA, L, 1, P) and on their thumbnails."""
    img = Image.fromarray(_photo())
    assert compute_phash(img) == str(imagehash.phash(img)) and len(compute_phash(img)) == 16
    checked = 0
    for path in sorted(imagededup_testdata.rglob("*.*")):
        if "corrupt" in path.name or path.name == "LICENSE":
            continue
        with Image.open(path) as im:
            thumb = make_thumbnail(im, 128)
            for candidate in (im, thumb):
                assert compute_phash(candidate) == str(imagehash.phash(candidate)), path.name
                checked += 1
    assert checked >= 60


def test_luma_stats_on_uniform_and_checkerboard() -> None:
    mean, std, sharp = luma_stats(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert (mean, std, sharp) == (128.0, 0.0, 0.0)
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    mean, std, sharp = luma_stats(Image.fromarray(board).convert("RGB"))
    assert mean == pytest.approx(127.5) and std == pytest.approx(127.5) and sharp > 1e5


def test_imagededup_testdata_all_accounted(imagededup_testdata: Path) -> None:
    uris = list(list_source(str(imagededup_testdata)))
    files = [p for p in imagededup_testdata.rglob("*") if p.is_file()]
    assert sorted(uris) == sorted(str(p) for p in files)
    table = process_partition(uris, str(imagededup_testdata), CurateConfig(), "t")
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert len(rows) == len(files) == table.num_rows
    for name in ("mixed_images/ukbench09268_corrupt.jpg", "mixed_nested_images/ukbench09268_corrupt.jpg"):
        assert rows[str(imagededup_testdata / name)]["reason"] == Reason.DECODE_ERROR
    assert rows[str(imagededup_testdata / "LICENSE")]["reason"] == Reason.NOT_AN_IMAGE
    formats = {Path(u).name: r for u, r in rows.items() if "/formats_images/" in u}
    assert len(formats) == 10 and all(r["status"] == "accepted" for r in formats.values())
    # the .svg, .png and .bmp files hold JPEG bytes: recorded by content
    assert {formats[f"ukbench09380.{e}"]["format"] for e in ("svg", "png", "bmp")} == {"JPEG"}
    assert formats["giphy.gif"]["format"] == "GIF" and formats["baboon.pgm"]["mode"] == "L"
    assert rows[str(imagededup_testdata / "alpha_channel_image.png")]["mode"] == "RGBA"


def test_draft_decoding_agrees_with_full_decoding(raw_photos: Path) -> None:
    """Measured on all 500 raw photos (128 px thumbnail): identical filter decisions under default
    and tightened thresholds; luma std within 1.8%; pHash median 0 bits, max 4."""
    paths = sorted(raw_photos.iterdir())
    tight = FilterConfig(min_side=200, min_luma_std=30, min_mean_luma=60)
    hamming, luma_diff = [], []
    for path in paths:
        data = path.read_bytes()
        fast = decode_record(str(path), data, MAX_PX, draft=True)
        full = decode_record(str(path), data, MAX_PX, draft=False)
        assert (fast.width, fast.height, fast.format) == (full.width, full.height, full.format)
        for cfg in (FilterConfig(), tight):
            fast_r, full_r = apply_filters(fast, cfg), apply_filters(full, cfg)
            near_threshold = abs((full.luma_std or 0) - cfg.min_luma_std) < 1 or (
                cfg.min_mean_luma is not None and abs((full.mean_luma or 0) - cfg.min_mean_luma) < 1
            )
            if not near_threshold:
                assert (fast_r or (None,))[0] == (full_r or (None,))[0], path.name
        hamming.append(bin(int(fast.phash or "0", 16) ^ int(full.phash or "0", 16)).count("1"))
        luma_diff.append(abs((fast.luma_std or 0) - (full.luma_std or 0)) / (full.luma_std or 1))
    assert len(paths) == 500
    assert float(np.median(hamming)) == 0 and max(hamming) <= 6
    assert max(luma_diff) < 0.05


def test_cifar_sized_image_needs_lower_min_side(tmp_path: Path) -> None:
    path = tmp_path / "cifar.jpg"
    path.write_bytes(_encode(Image.fromarray(_photo((32, 32), seed=3)), "JPEG", quality=75))
    rec = _decode(path)
    assert rec.reason is None and (rec.width, rec.height) == (32, 32)
    assert (apply_filters(rec, FilterConfig()) or (None,))[0] == Reason.TOO_SMALL
    assert apply_filters(rec, FilterConfig(min_side=32)) is None


def test_filters_order_and_optional_thresholds() -> None:
    from curation.decode import ImageRecord

    def rec(w: int = 400, h: int = 300, std: float = 40.0, sharp: float = 100.0, mean: float = 100.0):
        return ImageRecord("u", width=w, height=h, luma_std=std, sharpness=sharp, mean_luma=mean)

    cfg = FilterConfig()
    assert apply_filters(rec(), cfg) is None
    assert apply_filters(rec(w=40, h=400), cfg)[0] == Reason.TOO_SMALL  # type: ignore[index]  # first wins
    assert apply_filters(rec(w=1000, h=200), cfg)[0] == Reason.ASPECT_RATIO  # type: ignore[index]
    assert apply_filters(rec(std=2.0), cfg)[0] == Reason.LOW_INFORMATION  # type: ignore[index]
    assert apply_filters(rec(sharp=1.0, mean=5.0), cfg) is None  # blur and darkness are off by default
    on = FilterConfig(min_sharpness=20, min_mean_luma=30)
    assert apply_filters(rec(sharp=1.0), on)[0] == Reason.TOO_BLURRY  # type: ignore[index]
    assert apply_filters(rec(mean=5.0), on)[0] == Reason.TOO_DARK  # type: ignore[index]
    with pytest.raises(ValueError):
        apply_filters(ImageRecord("u", reason=Reason.DECODE_ERROR), cfg)
