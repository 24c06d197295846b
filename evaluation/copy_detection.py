"""Copy detection, measured: planted edited copies of real photos, fixed splits, and the metrics.

**Edits** (:data:`EDITS`): deterministic functions of a decoded photo, each saved as a JPEG the way a
copy-maker would (quality 95 unless the edit is a re-compression), in groups (issue 11):

- ``exact``: the original file's bytes, unchanged;
- ``easy``: ``resize_50`` (half size), ``jpeg_q50`` (re-compressed), ``brightness_+30``;
- ``hard``: ``crop_85`` (centre crop keeping 85% of each side), ``hflip``, ``rotate_5`` (5 degrees,
  black corners, same size), ``border`` (black frame, 10% of the short side), ``caption`` (a white text
  band of 20% of the height above the photo, meme style), ``grayscale``;
- ``extra``, reported apart: ``overlay_text`` (semi-transparent text across the lower third),
  ``blur`` (Gaussian, radius 1% of the short side, at least 2 px).

**Splits**: :func:`split_of` puts a photo in ``calibration`` or ``heldout`` by the sha256 of its file
name (a fixed salt; about half each). Thresholds are chosen on calibration only; ``heldout`` and
imagededup-testdata are never tuned on.

**Pools and ground truth**: a pool is a list of :class:`PoolItem`; two items are a positive pair
(near-duplicates) when they share ``source``: a copy with its original, and copies of one original with
each other. In imagededup-testdata (UKBench) the file name ``ukbenchNNNNN[_variant]`` gives the scene
(:func:`ukbench_scene`; ``alpha_channel_image.png`` is ukbench00120 saved with alpha, checked by eye,
see ``docs/dedup-threshold.md``); every other file is its own scene; files that do not decode
(``ukbench09268_corrupt.jpg``) take no part.

**Metrics** live in :mod:`evaluation.copy_metrics` (re-exported here): P/R at a threshold, the operating
point where precision reaches a target, and DISC21's micro-average precision (Douze et al. 2021).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from data_catalog.image import open_image
from evaluation.copy_metrics import (
    Counts,
    OperatingPoint,
    micro_average_precision,
    operating_point,
    pair_counts,
    pair_indices,
    pair_scores,
    positive_pairs,
    source_ranks,
)

__all__ = ["EDITS", "GROUPS", "Counts", "Edit", "OperatingPoint", "PoolItem", "copy_bytes", "generated_pool",
           "micro_average_precision", "operating_point", "pair_counts", "pair_indices", "pair_scores", "pair_type",
           "positive_pairs", "source_ranks", "split_of", "split_photos", "UKBENCH_GROUPS", "ukbench_pool", "ukbench_scene"]  # fmt: skip


# ----------------------------------------------------------------------------- edits
def scale(img: Image.Image, f: float) -> Image.Image:
    """``img`` resized by ``f`` (Lanczos), each side at least 8 px."""
    return img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))), Image.Resampling.LANCZOS)


def crop_fraction(img: Image.Image, frac: float, centre: bool = True) -> Image.Image:
    """Remove ``frac`` of each side length: split between both edges (centre) or from right/bottom."""
    dw, dh = round(img.width * frac), round(img.height * frac)
    left, top = (dw // 2, dh // 2) if centre else (0, 0)
    return img.crop((left, top, left + img.width - dw, top + img.height - dh))


def overlay_text(img: Image.Image) -> Image.Image:
    """Semi-transparent text, 1/10 of the image height, across the lower third (stock-photo style)."""
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    font = ImageFont.load_default(size=max(8, base.height // 10))
    ImageDraw.Draw(layer).text(
        (base.width // 20, base.height * 2 // 3),
        "(c) dinoflow stock 2026",
        font=font,
        fill=(255, 255, 255, 150),
    )
    return Image.alpha_composite(base, layer).convert("RGB")


def black_border(img: Image.Image, frac: float = 0.10) -> Image.Image:
    """A black frame of ``frac`` of the short side on every edge (the photo keeps its size)."""
    pad = max(1, round(min(img.size) * frac))
    out = Image.new(img.mode, (img.width + 2 * pad, img.height + 2 * pad))
    out.paste(img, (pad, pad))
    return out


def caption(img: Image.Image, frac: float = 0.20) -> Image.Image:
    """A white band of ``frac`` of the height above the photo holding black caption text (a meme)."""
    rgb = img.convert("RGB")
    band = max(8, round(rgb.height * frac))
    out = Image.new("RGB", (rgb.width, rgb.height + band), (255, 255, 255))
    out.paste(rgb, (0, band))
    font = ImageFont.load_default(size=max(6, band // 2))
    ImageDraw.Draw(out).text(
        (rgb.width // 20, band // 4), "when the pipeline runs", font=font, fill=(0, 0, 0)
    )
    return out


def rotate(img: Image.Image, degrees: float) -> Image.Image:
    """Rotated counter-clockwise about the centre, same size, corners filled black (bicubic)."""
    return img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)


def blur(img: Image.Image) -> Image.Image:
    """Gaussian blur of radius 1% of the short side, at least 2 px."""
    return img.filter(ImageFilter.GaussianBlur(max(2.0, min(img.size) / 100)))


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    """``img`` saved as a JPEG (PIL's default 4:2:0 chroma, as most copy-makers' tools save)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Edit:
    """An edit a copy-maker applies: ``apply`` maps the decoded RGB photo to the copy, saved at
    ``quality``; ``apply=None`` means the original bytes, unchanged."""

    name: str
    group: str
    apply: Callable[[Image.Image], Image.Image] | None
    quality: int = 95


EDITS: dict[str, Edit] = {
    e.name: e
    for e in (
        Edit("exact", "exact", None),
        Edit("resize_50", "easy", lambda im: scale(im, 0.5)),
        Edit("jpeg_q50", "easy", lambda im: im, 50),
        Edit("brightness_+30", "easy", lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
        Edit("crop_85", "hard", lambda im: crop_fraction(im, 0.15)),
        Edit("hflip", "hard", lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        Edit("rotate_5", "hard", lambda im: rotate(im, 5.0)),
        Edit("border", "hard", black_border),
        Edit("caption", "hard", caption),
        Edit("grayscale", "hard", lambda im: im.convert("L")),
        Edit("overlay_text", "extra", overlay_text),
        Edit("blur", "extra", blur),
    )
}
GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(n for n, e in EDITS.items() if e.group == g) for g in ("exact", "easy", "hard", "extra")
}


def copy_bytes(original: bytes, img: Image.Image, edit: str) -> bytes:
    """The encoded copy ``edit`` of a photo: ``original`` its file bytes, ``img`` its decoded RGB image
    (``data_catalog.image.open_image(original)``). Deterministic: the same inputs give the same bytes."""
    if edit not in EDITS:
        raise ValueError(f"unknown edit {edit!r}; valid edits: {', '.join(EDITS)}")
    e = EDITS[edit]
    return original if e.apply is None else encode_jpeg(e.apply(img), e.quality)


# ----------------------------------------------------------------------------- splits and pools
SPLITS = ("calibration", "heldout")
_SPLIT_SALT = b"dinoflow-copy-detection-split-v1:"


def split_of(name: str) -> str:
    """``"calibration"`` or ``"heldout"`` for a photo's file name (first bit of a salted sha256)."""
    return SPLITS[hashlib.sha256(_SPLIT_SALT + name.encode()).digest()[0] >> 7]


def split_photos(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """``{"calibration": [...], "heldout": [...]}``, each sorted by name."""
    out: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for p in sorted(paths, key=lambda p: p.name):
        out[split_of(p.name)].append(p)
    return out


@dataclass(frozen=True)
class PoolItem:
    """One image of a pool: ``key`` names it, ``source`` is its ground-truth group (same source = near
    duplicates), ``edit`` the edit that made it (``"original"`` for a source photo), ``data`` its bytes."""

    key: str
    source: str
    edit: str
    data: bytes


def generated_pool(paths: Iterable[Path], edits: Iterable[str] = tuple(EDITS)) -> list[PoolItem]:
    """Every photo (source = its file name) followed by its copies under ``edits``; photos that do not
    decode are left out."""
    pool: list[PoolItem] = []
    names = list(edits)
    for path in paths:
        data = path.read_bytes()
        try:
            img = open_image(data)
        except Exception:  # noqa: BLE001 - an undecodable photo cannot be copied; it takes no part
            continue
        pool.append(PoolItem(path.name, path.name, "original", data))
        pool += [PoolItem(f"{path.name}#{e}", path.name, e, copy_bytes(data, img, e)) for e in names]
    return pool


_UKBENCH = re.compile(r"^(ukbench\d{5})")
_UKBENCH_VARIANT = re.compile(r"^ukbench\d{5}_([a-z0-9]+)\.")
SCENE_OVERRIDES = {"alpha_channel_image.png": "ukbench00120"}
_UKBENCH_EDITS = {"hflip": "hflip", "rotation": "rotation", "resize": "resize", "gray": "grayscale"}


def ukbench_scene(rel: str) -> str:
    """The scene of an imagededup-testdata file (its path relative to the folder): ``ukbenchNNNNN`` for
    UKBench files and the override list, else the path itself (its own scene)."""
    match = _UKBENCH.match(Path(rel).name)
    return SCENE_OVERRIDES.get(rel, match.group(1) if match else rel)


def ukbench_edit(rel: str) -> str:
    """What made a UKBench file from its scene's photo: ``hflip``, ``rotation`` (about 30 degrees, black
    corners), ``resize`` (to 300x300, aspect not kept), ``grayscale``, ``alpha``, ``format`` (another
    file format) or ``original``."""
    name = Path(rel).name
    if rel in SCENE_OVERRIDES:
        return "alpha"
    if _UKBENCH.match(name) is None:
        return "original"
    variant = _UKBENCH_VARIANT.match(name)
    if variant:
        return _UKBENCH_EDITS.get(variant.group(1), variant.group(1))
    return "original" if name.lower().endswith(".jpg") else "format"


# UKBench's edits in the groups: the 300x300 squash, format changes and alpha keep every pixel's
# place up to scale; flips, the ~30 degree rotation and grayscale are the hard ones
UKBENCH_GROUPS: dict[str, tuple[str, ...]] = {
    "exact": ("exact",),
    "easy": ("format", "alpha", "resize"),
    "hard": ("hflip", "rotation", "grayscale"),
}


def ukbench_pool(root: Path) -> list[PoolItem]:
    """The decodable images of imagededup-testdata (sorted by path) with their scenes and edits."""
    pool = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "LICENSE"):
        data, rel = path.read_bytes(), str(path.relative_to(root))
        try:
            open_image(data)
        except Exception:  # noqa: BLE001 - the deliberately corrupt JPEG
            continue
        pool.append(PoolItem(rel, ukbench_scene(rel), ukbench_edit(rel), data))
    return pool


def pair_type(edit_a: str, edit_b: str) -> str:
    """The edit a positive pair tests: the copy's edit for (original, copy), ``"exact"`` for two
    originals (byte copies of one file), ``"a+b"`` for two copies (sorted)."""
    edits = sorted(e for e in (edit_a, edit_b) if e != "original")
    return "+".join(edits) if edits else "exact"
