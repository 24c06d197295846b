"""Webdataset shards: reading source images (files, fsspec URLs, tar members), encoding samples,
writing size-capped tar shards with md5s, and reading / verifying a dataset version's index.

Shard layout (what ``pretrain.data`` reads): each sample is two tar members with the same key,
``KEY.EXT`` (the image; ``EXT`` one of ``jpg png webp bmp tif gif ppm``) and ``KEY.json``. Keys have
no dots (webdataset splits a member name at its first dot): the sample's ``image_id`` (sha256 hex).
Tar headers are fixed (mtime 0, uid 0, mode 0444), so the same samples give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import numpy as np
from PIL import Image, ImageOps

from curation.sources import split_tar_uri
from data_catalog.catalog import Catalog
from data_catalog.datasets import DatasetRecord, get_dataset

# PIL format -> sample extension for images kept as their original bytes (MPO: multi-picture JPEG).
FORMAT_EXT = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "GIF": "gif",
    "PPM": "ppm",
}
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


# ----------------------------------------------------------------------------- reading sources
def split_tar_member(uri: str) -> tuple[str, str] | None:
    """``"a/b.tar#x/y.jpg"`` -> ``("a/b.tar", "x/y.jpg")``; None for a plain file or URL (the ingest
    stage's uri form, ``curation.sources.split_tar_uri``)."""
    return split_tar_uri(uri)


class _TarSource:
    """One source tar, its members located by one header scan, then read by seek + read (thread-safe).

    Compressed tars cannot seek: their ``wanted`` members are read in the scan and held in memory
    until used (prefer plain ``.tar`` sources: webdataset's own format). Remote member reads use an
    uncached handle, so a read fetches that member's bytes only.
    """

    def __init__(self, url: str, wanted: set[str], storage_options: dict[str, Any]) -> None:
        self.url, self.options, self.lock = url, storage_options, threading.Lock()
        self.compressed = not url.lower().endswith(".tar")
        self.members: dict[str, tuple[int, int]] = {}
        self.held: dict[str, bytes] = {}
        self.file: BinaryIO | None = None
        with fsspec.open(url, "rb", **storage_options) as f:
            with tarfile.open(fileobj=f, mode="r:*" if self.compressed else "r:") as tar:
                for info in tar:
                    if info.isfile():
                        self.members[info.name] = (info.offset_data, info.size)
                    if self.compressed and info.isfile() and info.name in wanted:
                        member = tar.extractfile(info)
                        assert member is not None
                        self.held[info.name] = member.read()

    def read(self, member: str) -> bytes:
        with self.lock:
            if member in self.held:
                return self.held.pop(member)
            if member not in self.members:
                raise FileNotFoundError(f"member {member!r} not found in tar {self.url}")
            if self.compressed:
                raise ValueError(
                    f"member {member!r} of compressed tar {self.url} was not announced as wanted"
                )
            if self.file is None:  # (re)opened lazily: an evicted source may still be read
                extra = {"cache_type": "none"} if "://" in self.url else {}
                self.file = fsspec.open(self.url, "rb", **extra, **self.options).open()
            offset, size = self.members[member]
            self.file.seek(offset)
            return bytes(self.file.read(size))

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


class SourceReader:
    """Reads image bytes by uri: local paths, fsspec URLs, and ``TAR#MEMBER`` (each tar scanned once).

    ``wanted`` (all uris that will be read) lets compressed tars be read in one pass. At most
    ``max_open`` tars stay open (least recently used closed first); ``storage_options`` go to fsspec.
    Use as a context manager.
    """

    def __init__(
        self, wanted: Iterable[str] = (), max_open: int = 64, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self.wanted: dict[str, set[str]] = {}
        for uri in wanted:
            parts = split_tar_member(uri)
            if parts:
                self.wanted.setdefault(parts[0], set()).add(parts[1])
        self.max_open, self.lock = max_open, threading.Lock()
        self.tars: OrderedDict[str, _TarSource] = OrderedDict()

    def _tar(self, url: str) -> _TarSource:
        with self.lock:
            if url in self.tars:
                self.tars.move_to_end(url)
                return self.tars[url]
            source = _TarSource(url, self.wanted.get(url, set()), self.storage_options)
            self.tars[url] = source
            while len(self.tars) > self.max_open:
                self.tars.popitem(last=False)[1].close()
            return source

    def read(self, uri: str) -> bytes:
        parts = split_tar_member(uri)
        if parts:
            return self._tar(parts[0]).read(parts[1])
        with fsspec.open(uri, "rb", **self.storage_options) as f:
            return bytes(f.read())

    def close(self) -> None:
        with self.lock:
            for source in self.tars.values():
                source.close()
            self.tars.clear()

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- encoding samples
def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: 16/32-bit and float greyscale rescaled (not clipped), alpha composited on white."""
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = (
            1.0
            if img.mode == "F" and arr.max(initial=0) <= 1.0
            else (65535.0 if arr.max(initial=0) > 255 else 255.0)
        )
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied (orientations 5-8 swap the sides)."""
    orientation = img.getexif().get(0x0112, 1)
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


@dataclass(frozen=True)
class EncodedImage:
    ext: str  # the sample's image extension
    data: bytes
    width: int  # pixels as displayed (EXIF orientation applied)
    height: int
    source_format: str | None  # PIL format of the source bytes
    reencoded: bool


def encode_image(data: bytes, reencode_max_side: int | None = None, jpeg_quality: int = 90) -> EncodedImage:
    """The sample image for source ``data``: the original bytes when their format is in ``FORMAT_EXT``,
    8-bit and (with ``reencode_max_side``) no side longer; otherwise a JPEG re-encode (EXIF orientation
    applied, RGB, longer side at most ``reencode_max_side``, aspect kept)."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        width, height = _oriented_size(img)
        too_big = reencode_max_side is not None and max(width, height) > reencode_max_side
        if fmt in FORMAT_EXT and img.mode not in HIGH_BIT_MODES and not too_big:
            return EncodedImage(FORMAT_EXT[fmt], data, width, height, fmt, False)
        if too_big and fmt in ("JPEG", "MPO"):
            # DCT-domain downscale by 2/4/8 while decoding, never below twice the target: much less
            # work for large photos; the LANCZOS resize after it still filters properly
            scale = reencode_max_side / max(img.size)  # type: ignore[operator]
            img.draft(None, (int(np.ceil(2 * img.width * scale)), int(np.ceil(2 * img.height * scale))))
        img.load()
        out = to_rgb(ImageOps.exif_transpose(img))
    if reencode_max_side is not None and max(out.size) > reencode_max_side:
        scale = reencode_max_side / max(out.size)
        size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
        out = out.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=jpeg_quality)
    return EncodedImage("jpg", buf.getvalue(), out.width, out.height, fmt, True)


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


def read_index(index_uri: str) -> dict[str, Any]:
    """The shard index JSON of a dataset version (shard ``url`` values are relative to its folder)."""
    with fsspec.open(index_uri, "rt") as f:
        return dict(json.load(f))


def _absolute(base: str, url: str) -> str:
    return url if "://" in url or url.startswith("/") else posixpath.join(base, url)


def shard_urls(record: DatasetRecord) -> list[str]:
    """Absolute URLs of the version's shards, in order (what ``webdataset.WebDataset`` takes)."""
    index = read_index(record.index_uri)
    return [_absolute(record.shards_uri, s["url"]) for s in index["shards"]]


def _check_shard(url: str, entry: dict[str, Any]) -> list[str]:
    md5, size, keys = hashlib.md5(), 0, set()
    with fsspec.open(url, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            size += len(chunk)
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        keys = {info.name.split(".", 1)[0] for info in tar if info.isfile()}
    problems = []
    for what, want, got in (("md5", entry["md5"], md5.hexdigest()), ("bytes", entry["bytes"], size)):
        if want != got:
            problems.append(f"{url}: {what} is {got}, index says {want}")
    if len(keys) != entry["num_samples"]:
        problems.append(f"{url}: holds {len(keys)} samples, index says {entry['num_samples']}")
    return problems


def verify_dataset(catalog: Catalog, name: str, version: int | None = None) -> dict[str, Any]:
    """Re-read every shard of ``name:vN``: md5, size and sample count against the index, totals
    against the catalog row. Returns ``{"dataset", "ok", "num_samples", "num_shards", "problems"}``."""
    record = get_dataset(catalog, name, version)
    index = read_index(record.index_uri)
    problems: list[str] = []
    for entry in index["shards"]:
        url = _absolute(record.shards_uri, entry["url"])
        try:
            problems += _check_shard(url, entry)
        except (OSError, tarfile.TarError) as err:
            problems.append(f"{url}: unreadable ({type(err).__name__}: {err})")
    counted = sum(int(s["num_samples"]) for s in index["shards"])
    for what, row_value, index_value in (
        ("num_samples", record.num_samples, counted),
        ("num_shards", record.num_shards, len(index["shards"])),
        ("total_bytes", record.total_bytes, sum(int(s["bytes"]) for s in index["shards"])),
    ):
        if row_value != index_value:
            problems.append(f"{what}: catalog row says {row_value}, index says {index_value}")
    return {
        "dataset": record.dataset_id,
        "ok": not problems,
        "num_samples": counted,
        "num_shards": len(index["shards"]),
        "problems": problems,
    }
