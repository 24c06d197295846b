"""Sources of raw images: list their inputs lazily and read their bytes.

A source spec is one string; its kind is detected from its shape (``source_kind``):

=========  ======================================================  ==========================================
kind       spec                                                    uri of one input
=========  ======================================================  ==========================================
folder     a local directory (``/data/raw``, ``file:///data/raw``)  absolute path of the file
fsspec     ``<protocol>://...`` directory (``s3://b/raw``)          ``<protocol>://...`` path of the file
tar        ``.tar``, ``.tar.gz``, ``.tgz`` file, a glob of them,   ``<shard>#<member name>``
           or a webdataset brace pattern (``shard-{000..009}.tar``)
list       a ``.parquet`` or ``.csv`` file with a ``uri`` column    the uri as written (relative paths are
                                                                   resolved against the list's folder)
=========  ======================================================  ==========================================

Listing never reads file bytes (a ``.tar.gz`` must be decompressed to list its members: gzip has
no index), yields uris one at a time and sorts only within one directory, so millions of inputs
stream. Every file is an input: non-images are listed too and recorded as ``not_an_image``.
Their bytes are read by ``data_catalog.uris`` (``iter_bytes``, re-exported here for ingest).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# reading bytes by uri is data_catalog's (one reader for every stage); ingest reads through it
from data_catalog.uris import (
    TAR_SUFFIXES,
    is_url,
    iter_bytes,
    open_binary,
    open_tar,
    split_tar_uri,
    strip_file,
)

LIST_SUFFIXES = (".parquet", ".csv")
__all__ = ["TAR_SUFFIXES", "iter_bytes", "list_source", "source_kind", "split_tar_uri"]


def _lower(spec: str) -> str:
    return spec.lower().rstrip("/")


def source_kind(spec: str) -> str:
    """``folder`` | ``fsspec`` | ``tar`` | ``list`` for a source spec (see the module table)."""
    low = _lower(spec)
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    if low.endswith(LIST_SUFFIXES):
        return "list"
    if is_url(spec):
        return "fsspec"
    path = os.path.expanduser(strip_file(spec))
    if os.path.isdir(path):
        return "folder"
    if os.path.exists(path):
        raise ValueError(
            f"source {spec!r} is a file but not a tar shard {TAR_SUFFIXES} or a uri list {LIST_SUFFIXES}"
        )
    raise FileNotFoundError(f"source {spec!r} does not exist")


def _walk_local(root: str) -> Iterator[str]:
    """Files under ``root``, depth first, sorted within each directory, symlinked dirs not followed."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_local(entry.path)
        elif entry.is_file():
            yield entry.path


def _list_folder(spec: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    yield from _walk_local(os.path.abspath(os.path.expanduser(strip_file(spec))))


def _list_fsspec(spec: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    fs, root = fsspec.core.url_to_fs(spec, **(storage_options or {}))
    protocol = spec.split("://", 1)[0]
    for dirpath, _dirs, files in fs.walk(root):
        for name in sorted(files):
            path = f"{dirpath.rstrip('/')}/{name}"
            yield fs.unstrip_protocol(path) if protocol != "memory" else f"memory://{path.lstrip('/')}"


def _expand_shards(spec: str, storage_options: dict[str, Any] | None) -> list[str]:
    """One shard spec -> shard paths: brace patterns (webdataset style) and globs expand."""
    import braceexpand

    out: list[str] = []
    for item in braceexpand.braceexpand(spec):
        if is_url(item):
            fs, path = fsspec.core.url_to_fs(item, **(storage_options or {}))
            paths = sorted(fs.glob(path)) if glob.has_magic(path) else [path]
            out += [fs.unstrip_protocol(p) for p in paths]
        else:
            local = os.path.abspath(os.path.expanduser(strip_file(item)))
            out += sorted(glob.glob(local)) if glob.has_magic(local) else [local]
    return out


def _list_tar(spec: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    for shard in _expand_shards(spec, storage_options):
        fobj, tar = open_tar(shard, storage_options)
        with fobj, tar:
            for member in tar:
                if member.isfile():
                    yield f"{shard}#{member.name}"


def _list_list(spec: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    base = os.path.dirname(os.path.abspath(strip_file(spec))) if not is_url(spec) else None
    with open_binary(spec if is_url(spec) else os.path.abspath(strip_file(spec)), storage_options) as f:
        if _lower(spec).endswith(".parquet"):
            pfile = pq.ParquetFile(f)
            if "uri" not in pfile.schema_arrow.names:
                raise ValueError(
                    f"uri list {spec!r} has no 'uri' column (columns: {pfile.schema_arrow.names})"
                )
            batches: Iterable[Any] = pfile.iter_batches(columns=["uri"], batch_size=65536, use_threads=False)
        else:
            reader = pacsv.open_csv(f)
            if "uri" not in reader.schema.names:
                raise ValueError(f"uri list {spec!r} has no 'uri' column (columns: {reader.schema.names})")
            batches = reader
        for batch in batches:
            for uri in batch.column(batch.schema.get_field_index("uri")).to_pylist():
                if uri is None or not str(uri).strip():
                    continue
                uri = str(uri).strip()
                if base is not None and "://" not in uri and not os.path.isabs(uri):
                    uri = os.path.join(base, uri)
                yield strip_file(uri)


_LISTERS: dict[str, Callable[[str, dict[str, Any] | None], Iterator[str]]] = {
    "folder": _list_folder,
    "fsspec": _list_fsspec,
    "tar": _list_tar,
    "list": _list_list,
}


def list_source(spec: str, storage_options: dict[str, Any] | None = None) -> Iterator[str]:
    """Yield the stable uri of every input of a source, lazily, without reading file bytes."""
    kind = source_kind(spec)
    if kind not in _LISTERS:
        raise ValueError(f"unknown source kind {kind!r}; valid: {sorted(_LISTERS)}")
    yield from _LISTERS[kind](spec, storage_options)
