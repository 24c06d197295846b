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
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".parquet", ".csv")

ReadResult = tuple[str, bytes | BaseException]


def _strip_file(spec: str) -> str:
    return spec[len("file://") :] if spec.startswith("file://") else spec


def _is_url(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def _lower(spec: str) -> str:
    return spec.lower().rstrip("/")


def source_kind(spec: str) -> str:
    """``folder`` | ``fsspec`` | ``tar`` | ``list`` for a source spec (see the module table)."""
    low = _lower(spec)
    if low.endswith(TAR_SUFFIXES):
        return "tar"
    if low.endswith(LIST_SUFFIXES):
        return "list"
    if _is_url(spec):
        return "fsspec"
    path = os.path.expanduser(_strip_file(spec))
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
    yield from _walk_local(os.path.abspath(os.path.expanduser(_strip_file(spec))))


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
        if _is_url(item):
            fs, path = fsspec.core.url_to_fs(item, **(storage_options or {}))
            paths = sorted(fs.glob(path)) if glob.has_magic(path) else [path]
            out += [fs.unstrip_protocol(p) for p in paths]
        else:
            local = os.path.abspath(os.path.expanduser(_strip_file(item)))
            out += sorted(glob.glob(local)) if glob.has_magic(local) else [local]
    return out


def _open(path: str, storage_options: dict[str, Any] | None) -> Any:
    if _is_url(path):
        return fsspec.open(path, "rb", **(storage_options or {})).open()
    return open(path, "rb")


def _open_tar(shard: str, storage_options: dict[str, Any] | None) -> tuple[Any, tarfile.TarFile]:
    """A plain .tar opens seekable (headers only are read while iterating); .tar.gz streams."""
    fobj = _open(shard, storage_options)
    if _lower(shard).endswith((".gz", ".tgz")):
        return fobj, tarfile.open(fileobj=fobj, mode="r|gz")
    return fobj, tarfile.open(fileobj=fobj, mode="r:")


def _list_tar(spec: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    for shard in _expand_shards(spec, storage_options):
        fobj, tar = _open_tar(shard, storage_options)
        with fobj, tar:
            for member in tar:
                if member.isfile():
                    yield f"{shard}#{member.name}"


def _list_list(spec: str, storage_options: dict[str, Any] | None) -> Iterator[str]:
    base = os.path.dirname(os.path.abspath(_strip_file(spec))) if not _is_url(spec) else None
    with _open(spec if _is_url(spec) else os.path.abspath(_strip_file(spec)), storage_options) as f:
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
                yield _strip_file(uri)


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


# ------------------------------------------------------------------------------------------- reading
def split_tar_uri(uri: str) -> tuple[str, str] | None:
    """``shard.tar#member`` -> (shard, member); None for a uri that is not a tar member."""
    low = uri.lower()
    for suffix in TAR_SUFFIXES:
        cut = low.find(suffix + "#")
        if cut >= 0:
            end = cut + len(suffix)
            return uri[:end], uri[end + 1 :]
    return None


def _read_tar_members(
    shard: str, members: list[str], storage_options: dict[str, Any] | None
) -> Iterator[ReadResult]:
    """Read the wanted members of one shard in one pass over the tar; missing ones are errors."""
    wanted = set(members)
    try:
        fobj, tar = _open_tar(shard, storage_options)
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
        with open(path, "rb") as f:
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


def iter_bytes(
    uris: list[str], storage_options: dict[str, Any] | None = None, read_batch: int = 32
) -> Iterator[ReadResult]:
    """(uri, bytes or the exception that reading raised) for every uri, each exactly once.

    Tar members are grouped by shard so each shard is read once; remote files are fetched
    ``read_batch`` at a time; local files one by one. Order: local, remote, then shard by shard.
    """
    shards: dict[str, list[str]] = {}
    remote: dict[str, list[str]] = {}
    for uri in uris:
        tar_parts = split_tar_uri(uri)
        if tar_parts is not None:
            shards.setdefault(tar_parts[0], []).append(tar_parts[1])
        elif _is_url(uri):
            remote.setdefault(uri.split("://", 1)[0], []).append(uri)
        else:
            yield uri, _read_local(_strip_file(uri))
    for group in remote.values():
        yield from _read_remote(group, storage_options, read_batch)
    for shard, members in shards.items():
        yield from _read_tar_members(shard, members, storage_options)
