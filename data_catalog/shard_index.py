"""The shard index of a dataset version: its schema, its one writer and its one reader.

A dataset version ``NAME:vN`` is a folder of webdataset tars and ``NAME-vN.index.json``, a JSON object:

=========================  ==========================================================================
key                        value
=========================  ==========================================================================
``shards``                 list of ``{"url", "num_samples", "bytes", "md5"}`` in order; ``url`` is
                           relative to the index's folder (or absolute); ``bytes``/``md5`` of the tar
``num_samples``            sum of the shards' ``num_samples``
``num_shards``             ``len(shards)``
``total_bytes``            sum of the shards' ``bytes``
``name``, ``version``      the version's identity
``brace_pattern``          ``NAME-vN-{000000..000012}.tar`` (webdataset / braceexpand syntax)
``created_at``             ISO 8601 time, UTC
``sample_key``             what a sample's ``__key__`` is (``image_id``: the image's sha256)
``images_table_version``   the images-table version the selection was read at (lineage)
``parents``                ``NAME:vN`` references of the versions this one was made from
``config``                 the resolved settings that wrote it (selection, sampling, curation rules)
``duplicate_ids_merged``   selected rows dropped because another row had the same ``image_id``
``skipped``                rows left out (``errors="skip"``), each with a ``reason`` and ``detail``
=========================  ==========================================================================

Only ``shards`` (each with ``url`` and ``num_samples``) is required to read an index, so a hand-written
index of one's own webdataset tars can be trained on (``python -m pretrain.train --dataset x.json``);
totals that are present must agree with the shards.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec

INDEX_SUFFIX = ".index.json"


def index_filename(name: str, version: int) -> str:
    """``NAME-vN.index.json``: the index's file name inside the version folder."""
    return f"{name}-v{version}{INDEX_SUFFIX}"


def _absolute(base: str, url: str) -> str:
    return url if "://" in url or url.startswith("/") or not base else posixpath.join(base, url)


@dataclass(frozen=True)
class ShardEntry:
    """One tar of a version: ``url`` (relative to the index's folder, or absolute), sample count,
    size in bytes and md5 hex digest of the whole file (None in hand-written indexes)."""

    url: str
    num_samples: int
    bytes: int | None = None
    md5: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "num_samples": self.num_samples, "bytes": self.bytes, "md5": self.md5}


@dataclass(frozen=True)
class ShardIndex:
    """A parsed index (module docstring); ``folder`` is where it was read from (relative urls)."""

    shards: tuple[ShardEntry, ...]
    name: str | None = None
    version: int | None = None
    brace_pattern: str | None = None
    created_at: str | None = None
    sample_key: str = "image_id"
    images_table_version: int | None = None
    parents: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    duplicate_ids_merged: int = 0
    skipped: tuple[dict[str, Any], ...] = ()
    folder: str = field(default="", compare=False)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes or 0 for s in self.shards)

    def absolute_shards(self, base: str | None = None) -> list[ShardEntry]:
        """The shards with absolute urls (relative ones resolved against ``base``, default ``folder``)."""
        root = self.folder if base is None else base
        return [replace(s, url=_absolute(root, s.url)) for s in self.shards]

    def urls(self, base: str | None = None) -> list[str]:
        """Absolute shard URLs in order: what ``webdataset.WebDataset`` takes."""
        return [s.url for s in self.absolute_shards(base)]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "num_samples": self.num_samples,
            "num_shards": self.num_shards, "total_bytes": self.total_bytes,
            "shards": [s.to_json() for s in self.shards], "brace_pattern": self.brace_pattern,
            "created_at": self.created_at, "sample_key": self.sample_key,
            "images_table_version": self.images_table_version, "parents": list(self.parents),
            "config": self.config, "duplicate_ids_merged": self.duplicate_ids_merged,
            "skipped": list(self.skipped),
        }  # fmt: skip


def _shard(entry: Any, where: str) -> ShardEntry:
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise ValueError(f"{where}: expected {{'url': str, 'num_samples': int, ...}}, got {entry!r}")
    count = entry.get("num_samples")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"{where}: 'num_samples' must be a non-negative integer, got {count!r}")
    size = entry.get("bytes")
    return ShardEntry(entry["url"], count, None if size is None else int(size), entry.get("md5") or None)


def parse_index(value: Any, source: str = "index", folder: str = "") -> ShardIndex:
    """A ``ShardIndex`` from a decoded JSON value; ``ValueError`` naming ``source`` when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("shards"), list):
        raise ValueError(f"{source} is not a shard index: expected a JSON object with a 'shards' list")
    shards = tuple(_shard(e, f"{source}: shards[{i}]") for i, e in enumerate(value["shards"]))
    if not shards:
        raise ValueError(f"{source} lists no shards")
    index = ShardIndex(
        shards=shards, name=value.get("name"), version=value.get("version"),
        brace_pattern=value.get("brace_pattern"), created_at=value.get("created_at"),
        sample_key=value.get("sample_key", "image_id"), images_table_version=value.get("images_table_version"),
        parents=tuple(value.get("parents") or ()), config=dict(value.get("config") or {}),
        duplicate_ids_merged=int(value.get("duplicate_ids_merged") or 0),
        skipped=tuple(value.get("skipped") or ()), folder=folder,
    )  # fmt: skip
    for key in ("num_samples", "num_shards", "total_bytes"):
        stated = value.get(key)
        if key == "total_bytes" and any(s.bytes is None for s in shards):
            continue
        if stated is not None and stated != getattr(index, key):
            raise ValueError(f"{source}: '{key}' is {stated}, its shards add up to {getattr(index, key)}")
    return index


def read_index(uri: str, storage_options: dict[str, Any] | None = None) -> ShardIndex:
    """Read and check the index JSON at ``uri`` (local path or fsspec URL)."""
    with fsspec.open(uri, "rt", **(storage_options or {})) as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{uri} is not valid JSON ({err})") from err
    return parse_index(value, uri, posixpath.dirname(uri))


def write_index(fs: fsspec.AbstractFileSystem, path: str, index: ShardIndex) -> None:
    """Write ``index`` to ``path`` on ``fs`` under a temporary name, then rename it into place."""
    tmp = f"{path}.part"
    with fs.open(tmp, "wb") as f:
        f.write(json.dumps(index.to_json(), indent=1, default=str).encode())
    fs.mv(tmp, path)
