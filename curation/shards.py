"""Webdataset shards: encoding samples, writing size-capped tar shards with md5s, verifying a version.

Shard layout (what ``pretrain.data`` and any webdataset consumer read): each sample is two tar
members with the same key, ``KEY.EXT`` (the image; ``EXT`` is ``jpg`` or ``png``) and ``KEY.json``.
The image is THE image of ``data_catalog.image`` (upright, RGB, transparency on white), so a plain
``webdataset.WebDataset(urls).decode("pil")`` gives it back at the json's ``width`` x ``height``:
source bytes are copied where they already decode to it, re-encoded otherwise (``encode_image``).
Keys have no dots (webdataset splits a member name at its first dot): the sample's ``image_id``
(sha256 hex of the source bytes). Tar headers are fixed (mtime 0, uid 0, mode 0444), so the same
samples give byte-identical shards. Source bytes are read by ``data_catalog.uris``; the index
schema, reader and writer are ``data_catalog.shard_index``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import numpy as np
from PIL import Image

from data_catalog.catalog import Catalog
from data_catalog.datasets import DatasetRecord, get_dataset
from data_catalog.image import kept_ext, load_image, oriented_size
from data_catalog.shard_index import ShardEntry, read_index

_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_REENCODE_EXT = {"JPEG": "jpg", "MPO": "jpg"}  # lossy sources stay JPEG; every other format -> PNG
# A JPEG re-encoded only to normalise it (rotation, CMYK) must not visibly lose: quality 95 with
# full-resolution chroma adds ~1.2-1.3 grey levels of mean error (4:2:0 at 90: 2.4-3.4) for ~1.1-1.2x
# the source's bytes (two real photos, measured 2026-11).
NORMALISE_JPEG = {"quality": 95, "subsampling": 0}


# ----------------------------------------------------------------------------- encoding samples
@dataclass(frozen=True)
class EncodedImage:
    ext: str  # the sample's image extension: jpg | png
    data: bytes
    width: int  # pixels of the stored image (upright: what the opener and webdataset decode)
    height: int
    source_format: str | None  # PIL format of the source bytes
    reencoded: bool


def _draft_size(img: Image.Image, max_side: int) -> tuple[int, int]:
    """A JPEG draft request that decodes (DCT-domain, by 2/4/8) to no less than twice the target:
    much less work for large photos, and the LANCZOS resize after it still filters properly."""
    scale = max_side / max(img.size)
    return int(np.ceil(2 * img.width * scale)), int(np.ceil(2 * img.height * scale))


def encode_image(data: bytes, reencode_max_side: int | None = None, jpeg_quality: int = 90) -> EncodedImage:
    """The sample image for source ``data``: THE image of ``data_catalog.image``, stored so that a plain
    webdataset ``.decode("pil")`` gives it back.

    The original bytes when ``data_catalog.image.kept_ext`` says they already decode to it (RGB or L
    JPEG/PNG, no transparency, upright) and (with ``reencode_max_side``) no side is longer.
    Otherwise a re-encode of the opener's image, longer side at most ``reencode_max_side`` (aspect
    kept): JPEG sources as JPEG at ``jpeg_quality``, every other format as PNG (lossless). The
    re-encode carries no EXIF (its pixels are upright) and no ICC profile (no stage applies one).
    A JPEG re-encoded only to normalise it (no resize) uses at least ``NORMALISE_JPEG``'s quality.
    """
    img = Image.open(io.BytesIO(data))
    fmt, ext = img.format, kept_ext(img, data)
    width, height = oriented_size(img)
    too_big = reencode_max_side is not None and max(width, height) > reencode_max_side
    if ext is not None and not too_big:
        return EncodedImage(ext, data, width, height, fmt, False)
    draft = _draft_size(img, reencode_max_side) if too_big else None  # type: ignore[arg-type]
    out = load_image(img, "RGB", draft)
    jpeg: dict[str, Any] = {"quality": jpeg_quality}
    if too_big:
        scale = reencode_max_side / max(out.size)  # type: ignore[operator]
        size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
        out = out.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    else:
        jpeg = {**NORMALISE_JPEG, "quality": max(jpeg_quality, NORMALISE_JPEG["quality"])}
    ext = _REENCODE_EXT.get(fmt or "", "png")
    buf = io.BytesIO()
    if ext == "jpg":
        out.save(buf, format="JPEG", **jpeg)
    else:
        out.save(buf, format="PNG")
    return EncodedImage(ext, buf.getvalue(), out.width, out.height, fmt, True)


# ----------------------------------------------------------------------------- writing shards
def member_bytes(size: int) -> int:
    """Bytes a tar member of ``size`` bytes takes: one header block plus the data padded to blocks."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def closed_size(offset: int) -> int:
    """The file size of a tar closed at ``offset``: two zero blocks, then padding to a whole record."""
    return -(-(offset + 2 * _BLOCK) // _RECORD) * _RECORD


class _HashingWriter:
    """A write-only file that counts bytes and computes their md5 while passing them on."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.md5, self.count = f, hashlib.md5(), 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.md5.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


class ShardWriter:
    """Writes one tar shard with fixed headers; ``add`` a sample as ``{ext: bytes}`` under ``key``."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.path, self.num_samples = path, 0
        self._file = fs.open(path, "wb")
        self._hash = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[call-overload]

    @property
    def offset(self) -> int:
        return self._hash.count

    def add(self, key: str, files: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not hold '.' or '/' (webdataset splits there)")
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1

    def close(self) -> dict[str, Any]:
        """Finish the tar; returns ``{"num_samples", "bytes", "md5"}``."""
        self._tar.close()
        self._file.close()
        return {"num_samples": self.num_samples, "bytes": self._hash.count, "md5": self._hash.md5.hexdigest()}


# ----------------------------------------------------------------------------- reading back
def brace_pattern(prefix: str, num_shards: int) -> str:
    """``prefix-{000000..000012}.tar`` (webdataset / braceexpand syntax) for ``num_shards`` shards."""
    if num_shards == 1:
        return f"{prefix}-000000.tar"
    return f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar"


def shard_urls(record: DatasetRecord) -> list[str]:
    """Absolute URLs of the version's shards, in order (what ``webdataset.WebDataset`` takes)."""
    return read_index(record.index_uri).urls(record.shards_uri)


def _check_shard(url: str, entry: ShardEntry) -> list[str]:
    md5, size, keys = hashlib.md5(), 0, set()
    with fsspec.open(url, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            size += len(chunk)
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        keys = {info.name.split(".", 1)[0] for info in tar if info.isfile()}
    problems = []
    for what, want, got in (("md5", entry.md5, md5.hexdigest()), ("bytes", entry.bytes, size)):
        if want != got:
            problems.append(f"{url}: {what} is {got}, index says {want}")
    if len(keys) != entry.num_samples:
        problems.append(f"{url}: holds {len(keys)} samples, index says {entry.num_samples}")
    return problems


def verify_dataset(catalog: Catalog, name: str, version: int | None = None) -> dict[str, Any]:
    """Re-read every shard of ``name:vN``: md5, size and sample count against the index, totals
    against the catalog row. Returns ``{"dataset", "ok", "num_samples", "num_shards", "problems"}``."""
    record = get_dataset(catalog, name, version)
    report: dict[str, Any] = {"dataset": record.dataset_id, "num_samples": 0, "num_shards": 0}
    try:
        index = read_index(record.index_uri)
    except (OSError, ValueError) as err:
        return {**report, "ok": False, "problems": [f"{record.index_uri}: unreadable index ({err})"]}
    problems: list[str] = []
    for entry in index.absolute_shards(record.shards_uri):
        try:
            problems += _check_shard(entry.url, entry)
        except (OSError, tarfile.TarError) as err:
            problems.append(f"{entry.url}: unreadable ({type(err).__name__}: {err})")
    for what in ("num_samples", "num_shards", "total_bytes"):
        row_value, index_value = getattr(record, what), getattr(index, what)
        if row_value != index_value:
            problems.append(f"{what}: catalog row says {row_value}, index says {index_value}")
    report.update(num_samples=index.num_samples, num_shards=index.num_shards)
    return {**report, "ok": not problems, "problems": problems}
