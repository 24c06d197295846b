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
- Only the first frame of animated GIF/WebP/TIFF is used.
- Modes: every metric needs luma only, so the thumbnail is 8-bit ``L`` (ITU-R 601-2 luma).
  RGB/CMYK/YCbCr/1/P convert; images with alpha (RGBA, LA, PA, P with transparency) are
  composited on WHITE first (what a viewer shows); 16-bit integer (I;16, and I above 255) scale
  by 1/257 to 8 bit; float (F) images in 0..1 scale by 255, otherwise clip.
- ``width``/``height`` are after EXIF orientation (5..8 swap them); the thumbnail is rotated too.

Speed: one decode per file, to a thumbnail. JPEGs use DCT-domain draft decoding
(``img.draft``: scale 1/2, 1/4 or 1/8 chosen so the short side stays >= ``thumbnail_size``); the
decoder emits luma directly (no colour conversion); the thumbnail is then resized so its short
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
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block is not worth rejecting the image for
        return 1
    return value if value in _TRANSPOSE else 1


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit luma ``L`` (ITU-R 601); alpha composited on white, deep images scaled."""
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            arr = arr * 255 if arr.max(initial=0) <= 1.0 else arr
        elif mode != "I" or arr.max(initial=0) > 255:
            arr = arr / 257  # 16-bit range -> 8-bit range
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return img.convert("L") if mode in ("RGB", "1", "P") else img.convert("RGB").convert("L")


def make_thumbnail(img: Image.Image, size: int, orientation: int = 1) -> Image.Image:
    """Grayscale (``L``) thumbnail, short side == ``size`` (up- or down-scaled), long side <= 8 * size.

    Grayscale because every metric (luma, sharpness, pHash) is a function of luma only.
    """
    gray = to_gray(img)
    w, h = gray.size
    scale = size / min(w, h)
    tw = min(max(1, round(w * scale)), _MAX_THUMB_ASPECT * size)
    th = min(max(1, round(h * scale)), _MAX_THUMB_ASPECT * size)
    if (tw, th) != (w, h):
        gray = gray.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return gray.transpose(_TRANSPOSE[orientation]) if orientation != 1 else gray


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


def _decode_pixels(img: Image.Image, thumbnail_size: int, orientation: int, draft: bool) -> Image.Image:
    try:
        if draft and img.format == "JPEG":
            # DCT-domain downscale, and luma straight from the decoder (no colour conversion)
            img.draft("L" if img.mode in ("RGB", "L") else img.mode, (thumbnail_size, thumbnail_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return make_thumbnail(img, thumbnail_size, orientation)
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
            orientation = _orientation(img)
            w, h = img.size
            record.width, record.height = (h, w) if orientation >= 5 else (w, h)
            if w * h > max_pixels:
                raise DecodeFailure(Reason.TOO_MANY_PIXELS, f"{w}x{h} = {w * h} px > max_pixels {max_pixels}")
            thumb = _decode_pixels(img, thumbnail_size, orientation, draft)
        record.phash = compute_phash(thumb)
        record.mean_luma, record.luma_std, record.sharpness = luma_stats(thumb)
    except DecodeFailure as failure:
        record.reason, record.detail = failure.reason, failure.detail
    except Exception as exc:  # anything unforeseen still becomes a recorded rejection
        record.reason, record.detail = Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}"
    return record
