"""The one image opener: file bytes -> the image every stage sees.

Ingest measures it, dataset versions store it, training, embedding and evaluation read it, so they all
see the same pixels. ``open_image(data)`` (or ``load_image(img)`` for an image already opened, e.g.
after a header check) returns an 8-bit RGB image with:

- **the first frame** of animated GIF / WebP / APNG / multi-page TIFF;
- **EXIF orientation applied**: tag 0x0112 values 2..8 (EXIF 2.32, section 4.6.4) transpose the pixels
  so the image is upright; 1, any other value and unreadable EXIF blocks mean "as stored";
- **transparency composited on white** (what a viewer shows on a white page): RGBA, LA, PA, the
  premultiplied RGBa / La, palette images with a transparent index and PNG ``tRNS`` colour keys of
  L, RGB and 16-bit grayscale images;
- **16-bit and float** grayscale scaled, not clipped: ``I;16*`` by 255 / 65535; ``I`` the same when
  its values exceed 255 (else taken as 8-bit); ``F`` by 255 when its values lie in 0..1 (else clipped);
- **everything else** (palette, 1-bit, grayscale, CMYK, YCbCr, LAB, HSV) converted with PIL's own
  conversion to RGB. ICC profiles are not applied (no stage colour-manages, so all agree).

``mode="L"`` gives the ITU-R 601-2 luma of that same RGB image, the one definition ingest's quality
measures use. ``draft=(w, h)`` lets a JPEG decode in the DCT domain at scale 1/2, 1/4 or 1/8, the
smallest that keeps each side >= (w, h) (in stored orientation); with ``mode="L"`` the decoder then
emits luma directly. Other formats ignore it.

**The sample format** of dataset versions (``kept_ext``): a source file is stored byte for byte only
when a plain ``PIL.Image.open(...).convert("RGB")`` of it, which is what webdataset's ``.decode("pil")``
does (timm and open_clip too), already gives this image: a JPEG (or MPO) in mode RGB or L, or a PNG
in mode RGB or L without ``tRNS``, with no EXIF orientation other than 1. Every other file is
re-encoded from this image (see ``curation.shards.encode_image``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
MODES = ("RGB", "L")
DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Source formats and modes kept as their original bytes in a dataset version, and their sample extension.
KEPT_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}
KEPT_MODES = frozenset({"RGB", "L"})


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation 1..8 of ``img`` (1 when absent, invalid or unreadable).

    Never decodes pixels: for a PNG not yet loaded only an ``eXIf`` chunk before the pixel data is
    seen (PIL reads a later one while loading; ask again after ``img.load()``).
    """
    try:
        if img.format == "PNG" and getattr(img, "tile", None):
            # PngImageFile.getexif() would decode every pixel to look for a late eXIf chunk
            exif = Image.Exif()
            if "exif" in img.info:
                exif.load(img.info["exif"])
        else:
            exif = img.getexif()
        value = int(exif.get(ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block is no reason to reject or rotate the image
        return 1
    return value if value in TRANSPOSE else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation: orientations 5..8 swap the sides."""
    w, h = img.size
    return (h, w) if exif_orientation(img) >= 5 else (w, h)


def has_transparency(img: Image.Image) -> bool:
    """True when some pixels of ``img`` may be (partly) transparent: an alpha band or a ``tRNS`` key."""
    return img.mode in ALPHA_MODES or "transparency" in img.info


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode == "La":
        img = img.convert("LA")  # PIL un-premultiplies La only to LA
    rgba = img.convert("RGBA")  # also un-premultiplies RGBa and applies tRNS keys
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _deep_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> ``L`` (``LA`` when a ``tRNS`` grey value is set)."""
    arr = np.asarray(img, dtype=np.float64)
    top = float(arr.max(initial=0))
    if img.mode == "F":
        arr = arr * 255.0 if top <= 1.0 else arr
    elif img.mode != "I" or top > 255:
        arr = arr * (255.0 / 65535.0)  # a 16-bit sample's range is 0..65535, whatever the content
    gray = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    key = img.info.get("transparency")
    if isinstance(key, int) and img.mode != "F":
        alpha = np.where(np.asarray(img) == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (gray, Image.fromarray(alpha, "L")))
    return gray


def normalize(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """``img`` (any PIL mode, loaded) as 8-bit ``RGB`` or its luma ``L`` (module docstring); no
    orientation. Returns ``img`` itself when it is already in ``mode`` without transparency."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {MODES}")
    if img.mode in DEEP_MODES:
        img = _deep_to_8bit(img)
    if has_transparency(img):
        img = _on_white(img)
    if img.mode == mode:
        return img
    if mode == "L" and img.mode not in ("RGB", "1", "P"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV: luma of their RGB, as for every stage
    return img.convert(mode)


def orient(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` transposed as EXIF ``orientation`` (1..8) says, to be displayed upright."""
    return img.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else img


def load_image(img: Image.Image, mode: str = "RGB", draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an opened (not yet loaded) image into THE image: oriented, normalised to ``mode``.

    ``draft``: JPEG only, decode at the smallest DCT scale keeping each side >= ``draft``.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {MODES}")
    if draft is not None and img.format in ("JPEG", "MPO"):
        img.draft("L" if mode == "L" and img.mode in ("RGB", "L") else None, draft)
    img.load()
    return orient(normalize(img, mode), exif_orientation(img))


def open_image(data: bytes, mode: str = "RGB", draft: tuple[int, int] | None = None) -> Image.Image:
    """THE image of a file's bytes: first frame, EXIF orientation applied, transparency on white,
    8-bit ``RGB`` (or its luma with ``mode="L"``). Raises PIL's errors for bytes it cannot decode
    (``PIL.UnidentifiedImageError``, ``OSError`` for truncated data, ``DecompressionBombError``)."""
    return load_image(Image.open(io.BytesIO(data)), mode, draft)


def kept_ext(img: Image.Image, data: bytes) -> str | None:
    """The sample extension (``jpg`` | ``png``) under which ``data`` (the bytes ``img`` was opened
    from) can be stored unchanged, or None when it must be re-encoded (module docstring)."""
    ext = KEPT_FORMATS.get(img.format or "")
    if ext is None or img.mode not in KEPT_MODES or "transparency" in img.info:
        return None
    if img.format == "PNG" and "exif" not in img.info and b"eXIf" in data:
        img.load()  # an eXIf chunk after the pixel data: PIL reads it only while decoding
    return ext if exif_orientation(img) == 1 else None
