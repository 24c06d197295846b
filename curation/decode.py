"""Robust, fast decoding of one file's bytes into an image record.

Decisions (each one is a rejection reason from ``data_catalog.images.Reason``, never an exception):

- zero bytes -> ``empty_file``; an exception while reading -> ``read_error``.
- The format comes from the content, never the extension (``.png`` holding a JPEG is a JPEG).
- Bytes PIL cannot identify: ``decode_error`` when they start with a known image signature or are
  binary under an image extension (a corrupt image), else ``not_an_image`` (text, SVG, PDF, zip...).
- Width * height from the header above ``max_pixels`` -> ``too_many_pixels`` before decoding a
  pixel; PIL's own DecompressionBombError (> 178,956,970 px, raised while opening) too.
- Truncated files are ``decode_error``: PIL's ``LOAD_TRUNCATED_IMAGES`` stays off (a half grey
  image is not a training image), and this module never changes PIL's globals.
- Pixels are THE image of ``data_catalog.image`` (the one opener every stage shares): the first
  frame of animated GIF/WebP/TIFF, EXIF orientation applied, transparency composited on white,
  16-bit scaled, CMYK/palette/1-bit to RGB. Every metric needs luma only, so the thumbnail is that
  image's 8-bit ITU-R 601-2 luma ``L``.
- ``width``/``height`` are after EXIF orientation (5..8 swap them), as the opener returns the image.

Speed: one decode per file, to a thumbnail. JPEGs use the opener's DCT-domain draft decoding
(scale 1/2, 1/4 or 1/8 chosen so the short side stays >= ``thumbnail_size``); the decoder emits
luma directly (no colour conversion); the thumbnail is then resized so its short
side is exactly ``thumbnail_size`` (long side capped at 8x),
so luma and sharpness statistics are comparable across image sizes. pHash, luma and sharpness all
come from that one thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fftpack
from PIL import Image, UnidentifiedImageError

from data_catalog.image import exif_orientation, load_image, normalize, oriented_size
from data_catalog.images import Reason

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif bmp dib tif tiff webp ppm pgm pbm pnm pfm ico icns tga psd "
    "jp2 j2k jpx heic heif avif dds pcx sgi qoi".split()
)
# Leading bytes of image formats: unidentifiable bytes with these are corrupt images.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"GIF8",
    b"BM",
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
    b"8BPS",  # PSD
    b"qoif",
)
_MAX_THUMB_ASPECT = 8


@dataclass
class ImageRecord:
    """What decoding learns about one input (the image columns of ``IMAGES_SCHEMA``)."""

    uri: str
    image_id: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    phash: str | None = None
    mean_luma: float | None = None
    luma_std: float | None = None
    sharpness: float | None = None
    reason: str | None = None  # None = decoded fine (filters decide acceptance)
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)  # shallow: every field is a scalar (asdict deep-copies, slowly)


class DecodeFailure(Exception):
    """Internal: a rejection found while decoding."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def compute_phash(img: Image.Image) -> str:
    """The 64-bit DCT perceptual hash (Zauner 2010; hackerfactor "Looks Like It"), 16 hex digits.

    Bit-identical to ``str(imagehash.phash(img))`` (same steps: luma, 32x32 Lanczos, 2-D DCT-II,
    8x8 low frequencies > their median, row-major bits) without its per-bit Python string work.
    """
    gray = img if img.mode == "L" else img.convert("L")
    pixels = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:8, :8].ravel()
    ranked = np.sort(low)
    median = (ranked[31] + ranked[32]) / 2  # == np.median(low), without its generic overhead
    return np.packbits(low > median).tobytes().hex()


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a multi-byte character cut by the head
            return True
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable >= 0.95 * len(head)


def classify_unidentified(data: bytes, uri: str) -> Reason:
    """Bytes PIL cannot open: a corrupt image (``decode_error``) or something else (``not_an_image``)."""
    head = data[:4096]
    if head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return Reason.DECODE_ERROR
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return Reason.DECODE_ERROR  # HEIF/AVIF without a decoder: an image we cannot read
    if _looks_like_text(head) or head.startswith((b"%PDF", b"PK\x03\x04", b"\x1f\x8b")):
        return Reason.NOT_AN_IMAGE
    ext = uri.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    return Reason.DECODE_ERROR if ext in IMAGE_EXTENSIONS else Reason.NOT_AN_IMAGE


def _open(data: bytes, uri: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecodeFailure(Reason.TOO_MANY_PIXELS, str(exc)) from exc
    except UnidentifiedImageError as exc:
        detail = f"no PIL format plugin accepts these bytes (first bytes {data[:12]!r})"
        raise DecodeFailure(classify_unidentified(data, uri), detail) from exc
    except Exception as exc:
        raise DecodeFailure(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from exc


def make_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Grayscale (``L``) thumbnail, short side == ``size`` (up- or down-scaled), long side <= 8 * size.

    ``img``: any mode (normalised as the opener does; not oriented here: pass the opener's image).
    Grayscale because every metric (luma, sharpness, pHash) is a function of luma only.
    """
    gray = normalize(img, "L")
    w, h = gray.size
    scale = size / min(w, h)
    tw = min(max(1, round(w * scale)), _MAX_THUMB_ASPECT * size)
    th = min(max(1, round(h * scale)), _MAX_THUMB_ASPECT * size)
    if (tw, th) != (w, h):
        gray = gray.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return gray


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and population std from two float64-accumulated sums (numpy's var is slow on small
    arrays). ``x`` holds integers below 2**12 in float32, so x*x is exact and E[x^2] - E[x]^2
    is exact to ~1e-11."""
    flat = x.ravel()
    mean = float(flat.sum(dtype=np.float64)) / flat.size
    var = float(np.square(flat).sum(dtype=np.float64)) / flat.size - mean * mean
    return mean, max(var, 0.0) ** 0.5


def luma_stats(thumb: Image.Image) -> tuple[float, float, float]:
    """(mean luma, luma std, variance of the 4-neighbour Laplacian) of the ITU-R 601 luma, 0..255.

    Sharpness is the "variance of Laplacian" focus measure (Pech-Pacheco et al., ICPR 2000),
    the 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]] over the valid region.
    """
    gray = np.asarray(thumb if thumb.mode == "L" else thumb.convert("L"), dtype=np.float32)
    mean, std = _mean_std(gray)
    if min(gray.shape) < 3:
        return mean, std, 0.0
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1]  # in-place sums: this runs once per image, keep it lean
    lap += gray[1:-1, :-2]
    lap += gray[1:-1, 2:]
    lap -= 4 * gray[1:-1, 1:-1]
    return mean, std, _mean_std(lap)[1] ** 2


def _decode_pixels(img: Image.Image, thumbnail_size: int, draft: bool) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # THE image's luma; for RGB/L JPEGs a DCT-domain downscale with luma from the decoder
            gray = load_image(img, "L", (thumbnail_size, thumbnail_size) if draft else None)
        return make_thumbnail(gray, thumbnail_size)
    except Image.DecompressionBombError as exc:
        raise DecodeFailure(Reason.TOO_MANY_PIXELS, str(exc)) from exc
    except Exception as exc:  # truncated, corrupt stream, bad palette, ...
        raise DecodeFailure(Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from exc


def decode_record(
    uri: str,
    data: bytes | BaseException,
    max_pixels: int,
    thumbnail_size: int = 128,
    draft: bool = True,
) -> ImageRecord:
    """Decode one input's bytes (or the exception reading raised) into an ``ImageRecord``.

    Never raises for bad input: the failure is in ``record.reason`` / ``record.detail``.
    """
    if isinstance(data, BaseException):
        return ImageRecord(uri, reason=Reason.READ_ERROR, detail=f"{type(data).__name__}: {data}")
    record = ImageRecord(uri, image_id=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if not data:
        record.reason, record.detail = Reason.EMPTY_FILE, "0 bytes"
        return record
    try:
        img = _open(data, uri)
        with img:
            record.format, record.mode = img.format, img.mode
            w, h = img.size
            record.width, record.height = oriented_size(img)  # from the header: no pixel decoded yet
            if w * h > max_pixels:
                raise DecodeFailure(Reason.TOO_MANY_PIXELS, f"{w}x{h} = {w * h} px > max_pixels {max_pixels}")
            thumb = _decode_pixels(img, thumbnail_size, draft)
            # asked again: a PNG's late eXIf chunk is read while decoding (img.size is the draft's now)
            record.width, record.height = (h, w) if exif_orientation(img) >= 5 else (w, h)
        record.phash = compute_phash(thumb)
        record.mean_luma, record.luma_std, record.sharpness = luma_stats(thumb)
    except DecodeFailure as failure:
        record.reason, record.detail = failure.reason, failure.detail
    except Exception as exc:  # anything unforeseen still becomes a recorded rejection
        record.reason, record.detail = Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}"
    return record
