"""The one reader of file bytes by uri, for every stage (ingest, dataset versions, embedding, training).

A uri is one of:

- a local path (``/data/raw/a.jpg``, ``file:///data/raw/a.jpg``, ``~/raw/a.jpg``);
- an fsspec URL (``s3://bucket/raw/a.jpg``, ``gs://…``, ``https://…``, ``memory://…``);
- a tar member, ``<shard>#<member name>`` where ``<shard>`` ends in ``.tar``, ``.tar.gz`` or ``.tgz``
  and is itself a local path or URL (``s3://b/part-000.tar#imgs/a.jpg``); the member name may hold
  ``#``: the split is at the first ``#`` after a tar suffix.

``UriReader.read(uri)`` reads one uri (random access: a plain tar is scanned once for its member
offsets, then each member is one seek + read; compressed tars are streamed once for the members
announced as ``wanted``). ``UriReader.read_many(uris)`` reads a list in the cheapest order for
throughput (ingest): local files one by one, remote files ``read_batch`` at a time through
``fs.cat`` (concurrent on s3/gcs/http), tar members in one streaming pass per shard; each failure
is returned in place of the bytes, never raised.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import fsspec

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")

ReadResult = tuple[str, bytes | BaseException]


def strip_file(uri: str) -> str:
    """``file:///a/b`` -> ``/a/b``; anything else unchanged."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def is_url(uri: str) -> bool:
    """True for an fsspec URL other than ``file://`` (those are local paths)."""
    return "://" in uri and not uri.startswith("file://")


def split_tar_uri(uri: str) -> tuple[str, str] | None:
    """``shard.tar#member`` -> (shard, member); None for a uri that is not a tar member."""
    low = uri.lower()
    for suffix in TAR_SUFFIXES:
        cut = low.find(suffix + "#")
        if cut >= 0:
            end = cut + len(suffix)
            return uri[:end], uri[end + 1 :]
    return None


def open_binary(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A binary file object for a local path or fsspec URL (the caller closes it)."""
    if is_url(uri):
        return fsspec.open(uri, "rb", **(storage_options or {})).open()
    return open(os.path.expanduser(strip_file(uri)), "rb")


def open_tar(shard: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, tarfile.TarFile]:
    """(file object, tar) of a shard: a plain .tar opens seekable (iterating reads headers only);
    .tar.gz / .tgz stream (gzip has no index)."""
    fobj = open_binary(shard, storage_options)
    if shard.lower().endswith((".gz", ".tgz")):
        return fobj, tarfile.open(fileobj=fobj, mode="r|gz")
    return fobj, tarfile.open(fileobj=fobj, mode="r:")


class _TarSource:
    """One tar, its members located by one header scan, then read by seek + read (thread-safe).

    Compressed tars cannot seek: their ``wanted`` members are read in the scan and held in memory
    until used (prefer plain ``.tar``: webdataset's own format). Remote member reads use an
    uncached handle, so a read fetches that member's bytes only.
    """

    def __init__(self, url: str, wanted: set[str], storage_options: dict[str, Any]) -> None:
        self.url, self.options, self.lock = url, storage_options, threading.Lock()
        self.compressed = not url.lower().endswith(".tar")
        self.members: dict[str, tuple[int, int]] = {}
        self.held: dict[str, bytes] = {}
        self.file: BinaryIO | None = None
        fobj, tar = open_tar(url, storage_options)
        with fobj, tar:
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
                if is_url(self.url):
                    self.file = fsspec.open(self.url, "rb", cache_type="none", **self.options).open()
                else:
                    self.file = open_binary(self.url)
            offset, size = self.members[member]
            self.file.seek(offset)
            return bytes(self.file.read(size))

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


def _stream_tar_members(
    shard: str, members: list[str], storage_options: dict[str, Any] | None
) -> Iterator[ReadResult]:
    """The wanted members of one shard in one pass over the tar; missing ones are errors."""
    wanted = set(members)
    try:
        fobj, tar = open_tar(shard, storage_options)
        with fobj, tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    wanted.discard(member.name)
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    yield f"{shard}#{member.name}", extracted.read()
                    if not wanted:
                        return
    except Exception as exc:  # a broken shard fails only its not-yet-read members
        for name in sorted(wanted):
            yield f"{shard}#{name}", exc
        return
    for name in sorted(wanted):
        yield f"{shard}#{name}", FileNotFoundError(f"member {name!r} not found in {shard}")


def _read_local(path: str) -> bytes | BaseException:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read()
    except Exception as exc:
        return exc


def _read_remote(uris: list[str], storage_options: dict[str, Any] | None, batch: int) -> Iterator[ReadResult]:
    """fsspec URLs, ``batch`` at a time through ``fs.cat`` (concurrent on s3/gcs/http)."""
    for start in range(0, len(uris), batch):
        chunk = uris[start : start + batch]
        try:
            fs, _ = fsspec.core.url_to_fs(chunk[0], **(storage_options or {}))
            paths = [fs._strip_protocol(u) for u in chunk]
            got = fs.cat(paths, on_error="return")
            if not isinstance(got, dict):  # a single path returns bytes
                got = {paths[0]: got}
        except Exception as exc:
            yield from ((u, exc) for u in chunk)
            continue
        for uri, path in zip(chunk, paths, strict=True):
            value = got.get(path, FileNotFoundError(uri))
            yield uri, value if isinstance(value, bytes | BaseException) else bytes(value)


class UriReader:
    """Reads file bytes by uri (module docstring). Use as a context manager.

    ``wanted`` (uris that ``read`` will be asked for) lets compressed tars be read in one pass. At
    most ``max_open`` tars stay open for ``read`` (least recently used closed first);
    ``storage_options`` (credentials, endpoints) go to fsspec.
    """

    def __init__(
        self, wanted: Iterable[str] = (), max_open: int = 64, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self.wanted: dict[str, set[str]] = {}
        for uri in wanted:
            parts = split_tar_uri(uri)
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
        """The bytes of one uri; raises what reading raises (``FileNotFoundError``, ``OSError``...)."""
        parts = split_tar_uri(uri)
        if parts:
            return self._tar(parts[0]).read(parts[1])
        with open_binary(uri, self.storage_options) as f:
            return bytes(f.read())

    def read_many(self, uris: Iterable[str], read_batch: int = 32) -> Iterator[ReadResult]:
        """(uri, bytes or the exception that reading raised) for every uri, each exactly once.

        Order: local files, then remote ones, then tar members shard by shard (one pass each).
        """
        shards: dict[str, list[str]] = {}
        remote: dict[str, list[str]] = {}
        for uri in uris:
            tar_parts = split_tar_uri(uri)
            if tar_parts is not None:
                shards.setdefault(tar_parts[0], []).append(tar_parts[1])
            elif is_url(uri):
                remote.setdefault(uri.split("://", 1)[0], []).append(uri)
            else:
                yield uri, _read_local(strip_file(uri))
        for group in remote.values():
            yield from _read_remote(group, self.storage_options, read_batch)
        for shard, members in shards.items():
            yield from _stream_tar_members(shard, members, self.storage_options)

    def close(self) -> None:
        with self.lock:
            for source in self.tars.values():
                source.close()
            self.tars.clear()

    def __enter__(self) -> UriReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_bytes(
    uris: list[str], storage_options: dict[str, Any] | None = None, read_batch: int = 32
) -> Iterator[ReadResult]:
    """``UriReader(storage_options=...).read_many(uris, read_batch)``: every uri's bytes or error."""
    with UriReader(storage_options=storage_options) as reader:
        yield from reader.read_many(uris, read_batch)
