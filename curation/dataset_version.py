"""Write a set of images as a new, immutable dataset version: webdataset shards, an index, a catalog row.

Order (deterministic, documented): the selected rows are de-duplicated by ``image_id`` (same id =
same bytes; the lowest ``uri`` is kept), sorted by ``image_id``, and permuted by
``numpy.random.default_rng(seed)``; with ``max_samples`` the first ``max_samples`` of the
permutation are taken, i.e. a uniform sample without replacement. Shards are filled in that order,
so they are already shuffled, and the same inputs give byte-identical shards.

Atomicity: everything is written to ``datasets/NAME/.tmp-vN-<uuid>/`` first, the folder is moved to
``datasets/NAME/vN/`` (a rename on local disks, a per-object move on remote stores), and the
``datasets`` row is committed LAST. A write killed at any point leaves no visible version; its temp
folder is removed when the write fails in-process, and ignored (then removed once older than
``STALE_TEMP_S``) otherwise. A ``vN`` folder without a row (a kill between the move and the commit)
is never overwritten: the next version number skips it.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.core import split_protocol

from curation.shards import EncodedImage, ShardWriter, brace_pattern, closed_size, encode_image, member_bytes
from data_catalog.catalog import Catalog
from data_catalog.datasets import (
    DatasetRecord,
    dataset_id,
    parse_dataset_ref,
    register_dataset,
    validate_name,
    versions,
)
from data_catalog.images import Reason, accepted
from data_catalog.shard_index import ShardEntry, ShardIndex, index_filename, write_index
from data_catalog.uris import UriReader

STALE_TEMP_S = 24 * 3600  # temp folders older than this are left-overs of killed writes
_BASE_COLUMNS = ("image_id", "uri")
_VERSION_DIR = re.compile(r"^v(\d+)$")
Progress = Callable[[int, int], None]  # (samples written, samples planned)
ERROR_MODES = ("raise", "skip")


def order_selection(selection: pa.Table, max_samples: int | None, seed: int) -> tuple[pa.Table, int]:
    """The rows to write, in shard order (see the module docstring); also how many duplicate ids were merged."""
    missing = [c for c in _BASE_COLUMNS if c not in selection.column_names]
    if missing:
        raise ValueError(f"selection lacks column(s) {missing}; it needs at least {list(_BASE_COLUMNS)}")
    for col in _BASE_COLUMNS:
        if selection.column(col).null_count:
            raise ValueError(f"selection has {selection.column(col).null_count} null value(s) in {col!r}")
    table = selection.sort_by([("image_id", "ascending"), ("uri", "ascending")])
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    merged = int((~first).sum())
    table = table.filter(pa.array(first))
    order = np.random.default_rng(seed).permutation(table.num_rows)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        order = order[:max_samples]
    return table.take(pa.array(order, pa.int64())), merged


def next_version(catalog: Catalog, name: str) -> int:
    """One more than every committed version and every ``vN`` folder (kept even without a row)."""
    fs, root = catalog.filesystem(), catalog.uri("datasets", name)
    folders = []
    if fs.exists(root):
        for path in fs.ls(root, detail=False):
            match = _VERSION_DIR.match(posixpath.basename(str(path).rstrip("/")))
            if match:
                folders.append(int(match.group(1)))
    return max([0, *versions(catalog, name), *folders]) + 1


def clean_stale_temp(catalog: Catalog, name: str, older_than_s: float = STALE_TEMP_S) -> list[str]:
    """Remove temp folders of killed writes of ``name`` older than ``older_than_s``; returns them."""
    fs, root = catalog.filesystem(), catalog.uri("datasets", name)
    if not fs.exists(root):
        return []
    removed = []
    for info in fs.ls(root, detail=True):
        path = str(info["name"]).rstrip("/")
        if not posixpath.basename(path).startswith(".tmp-"):
            continue
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        if mtime is None:  # object stores keep no folder times: never guess a live writer is dead
            continue
        stamp = mtime.timestamp() if isinstance(mtime, datetime) else float(mtime)
        if time.time() - stamp >= older_than_s:
            fs.rm(path, recursive=True)
            removed.append(path)
    return removed


@dataclass(frozen=True)
class SampleError:
    reason: str  # images-table vocabulary: read_error | decode_error
    error: Exception


def _rows(table: pa.Table, batch: int = 4096) -> Iterator[dict[str, Any]]:
    """The table's rows as dicts, ``batch`` at a time (bounded memory for millions of rows)."""
    for start in range(0, table.num_rows, batch):
        yield from table.slice(start, batch).to_pylist()


def _encoded(
    rows: Iterator[dict[str, Any]], reader: UriReader, max_side: int | None, quality: int, workers: int
) -> Iterator[tuple[dict[str, Any], EncodedImage | SampleError]]:
    """(row, EncodedImage or SampleError) in ``rows`` order, read and encoded by ``workers`` threads
    with at most ``8 x workers`` samples in flight (PIL and file reads release the GIL)."""

    def work(row: dict[str, Any]) -> Any:
        try:
            data = reader.read(row["uri"])
        except Exception as err:  # reported per sample by the caller
            return SampleError(Reason.READ_ERROR.value, err)
        try:
            return encode_image(data, max_side, quality)
        except Exception as err:
            return SampleError(Reason.DECODE_ERROR.value, err)

    window: deque[tuple[dict[str, Any], Future]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for row in rows:
                window.append((row, pool.submit(work, row)))
                if len(window) >= 8 * max(1, workers):
                    done_row, future = window.popleft()
                    yield done_row, future.result()
            while window:
                done_row, future = window.popleft()
                yield done_row, future.result()
        finally:
            for _, future in window:  # stopped early (error, crash): drop what is queued
                future.cancel()


def _sample_json(row: dict[str, Any], image: Any) -> bytes:
    record = {k: v for k, v in row.items() if k not in ("width", "height", "format", "mode", "bytes")}
    record.update(
        width=image.width, height=image.height, source_format=image.source_format, reencoded=image.reencoded
    )
    return json.dumps(record, sort_keys=True, default=str).encode()


class _ShardSet:
    """Fills shards ``PREFIX-000000.tar`` ... in ``folder``, starting a new one at the size/count cap."""

    def __init__(self, catalog: Catalog, folder: str, prefix: str, max_bytes: int, max_samples: int | None):
        self.fs, self.folder, self.prefix = catalog.filesystem(), folder, prefix
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.writer: ShardWriter | None = None
        self.shards: list[ShardEntry] = []

    def add(self, key: str, files: dict[str, bytes]) -> None:
        size = sum(member_bytes(len(d)) for d in files.values())
        w = self.writer
        if (
            w is not None
            and w.num_samples
            and (
                closed_size(w.offset + size) > self.max_bytes
                or (self.max_samples is not None and w.num_samples >= self.max_samples)
            )
        ):
            self.finish()
        if self.writer is None:
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self.writer = ShardWriter(self.fs, posixpath.join(self.folder, name))
        self.writer.add(key, files)

    def finish(self) -> None:
        if self.writer is not None:
            self.shards.append(ShardEntry(posixpath.basename(self.writer.path), **self.writer.close()))
            self.writer = None


def write_shards(
    catalog: Catalog,
    rows: pa.Table,
    folder: str,
    prefix: str,
    opts: dict[str, Any],
    progress: Progress | None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[ShardEntry], list[dict[str, str]]]:
    """Write ``rows`` (in order) as shards in ``folder``; returns (shard entries, skipped samples).

    ``progress(done, total)`` is called every ``max(1, total // 1000)`` samples and after the last.
    """
    shards = _ShardSet(catalog, folder, prefix, opts["shard_max_bytes"], opts["shard_max_samples"])
    skipped: list[dict[str, Any]] = []
    total, every = rows.num_rows, max(1, rows.num_rows // 1000)
    with UriReader(rows.column("uri").to_pylist(), storage_options=storage_options) as reader:
        args = (reader, opts["reencode_max_side"], opts["jpeg_quality"], opts["workers"])
        encoded = _encoded(_rows(rows), *args)
        for done, (row, image) in enumerate(encoded, start=1):
            if isinstance(image, SampleError):
                detail = f"{type(image.error).__name__}: {image.error}"
                if opts["errors"] == "raise":
                    raise RuntimeError(
                        f"cannot write sample {row['image_id']} from {row['uri']} ({image.reason}): {detail}"
                    ) from image.error
                skipped.append({**row, "reason": image.reason, "detail": detail})
            else:
                shards.add(row["image_id"], {image.ext: image.data, "json": _sample_json(row, image)})
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total)
    shards.finish()
    return shards.shards, skipped


def _publish(catalog: Catalog, tmp: str, final: str) -> None:
    """Move the finished temp folder to its version folder (never onto an existing one)."""
    fs = catalog.filesystem()
    if fs.exists(final):
        raise FileExistsError(f"{final} already exists: another write took this version; re-run")
    if catalog.is_local:
        os.rename(tmp, final)  # atomic; fails if another writer created ``final`` meanwhile
        return
    # object stores have no folders and no rename: copy each object server-side, then delete the
    # temp objects. Not atomic, and it need not be: the catalog row, committed after this, is
    # what makes the version visible.
    prefix = split_protocol(tmp)[1].rstrip("/") + "/"
    for src in fs.find(tmp):  # paths without the protocol
        rel = split_protocol(str(src))[1][len(prefix) :]
        fs.copy(src, posixpath.join(final, rel))
    fs.rm(tmp, recursive=True)


def _selection_and_version(catalog: Catalog, selection: pa.Table | None) -> tuple[pa.Table, int | None]:
    images_version = catalog.version("images")
    if selection is not None:
        return selection, images_version
    if images_version is None:
        raise ValueError(f"catalog {catalog.root} has no images table: run `dinoflow curate` first")
    cols = ["image_id", "uri", "width", "height"]
    table = accepted(catalog, version=images_version, columns=cols)
    return table.filter(pc.is_valid(table.column("image_id"))), images_version


def _options(config: dict[str, Any] | None, selection: pa.Table | None, **opts: Any) -> dict[str, Any]:
    """The resolved config saved with the version (never credentials: it is written beside the shards)."""
    if opts["errors"] not in ERROR_MODES:
        raise ValueError(f"errors={opts['errors']!r}: choose one of {ERROR_MODES}")
    if opts["shard_max_bytes"] < 1 or (opts["shard_max_samples"] or 1) < 1:
        raise ValueError("shard_max_bytes and shard_max_samples must be positive")
    chosen = "accepted" if selection is None else f"custom ({selection.num_rows} rows)"
    return {**opts, "selection": chosen, "stage": config or {}}


def _parent_ids(parents: Sequence[str]) -> list[str]:
    """Parents as ``NAME:vN`` (``NAME:3`` accepted); a parent must name its version."""
    out = []
    for ref in parents:
        parent, version = parse_dataset_ref(ref)
        if version is None:
            raise ValueError(f"parent {ref!r} must name a version: NAME:vN")
        out.append(dataset_id(parent, version))
    return out


def _write_version(
    catalog: Catalog,
    name: str,
    version: int,
    ordered: pa.Table,
    meta: dict[str, Any],
    progress: Progress | None,
    storage_options: dict[str, Any] | None,
) -> ShardIndex:
    """Shards + index into a temp folder, then moved to ``vN``; the temp folder is removed on failure.
    Returns the index."""  # fmt: skip
    prefix, opts = f"{name}-v{version}", meta["config"]
    fs, root = catalog.filesystem(), catalog.uri("datasets", name)
    tmp = posixpath.join(root, f".tmp-v{version}-{uuid.uuid4().hex[:12]}")
    fs.makedirs(tmp, exist_ok=True)
    try:
        shards, skipped = write_shards(catalog, ordered, tmp, prefix, opts, progress, storage_options)
        if not shards:
            raise ValueError(f"dataset {name!r}: every one of {ordered.num_rows} samples was skipped")
        index = ShardIndex(
            shards=tuple(shards), name=name, version=version, brace_pattern=brace_pattern(prefix, len(shards)),
            created_at=datetime.now(UTC).isoformat(), sample_key="image_id", skipped=tuple(skipped), **meta,
        )  # fmt: skip
        write_index(fs, posixpath.join(tmp, index_filename(name, version)), index)
        _publish(catalog, tmp, posixpath.join(root, f"v{version}"))
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise
    return index


def create_dataset_version(
    catalog: Catalog,
    name: str,
    *,
    selection: pa.Table | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    shard_max_bytes: int = 1_000_000_000,
    shard_max_samples: int | None = None,
    reencode_max_side: int | None = None,
    jpeg_quality: int = 90,
    parents: Sequence[str] = (),
    config: dict[str, Any] | None = None,
    curation: dict[str, Any] | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    errors: str = "raise",
    workers: int = 4,
    storage_options: dict[str, Any] | None = None,
) -> DatasetRecord:
    """Write ``selection`` (default: every accepted image at the current images table version) as
    version ``NAME:vN`` (next N) and return its committed record.

    ``selection`` needs ``image_id`` and ``uri``; its other columns (``cluster_id``, ...) go into each
    sample's json. ``parents`` are ``NAME:vN`` lineage references; ``config`` (the calling stage's
    settings) is saved under ``"stage"`` in the record's config, ``curation`` (the curation settings
    that decided which images the catalog accepts: filter thresholds, hash radius, ...) under
    ``"curation"``. ``errors``: ``"raise"`` stops at the
    first unreadable/undecodable sample (no version), ``"skip"`` leaves it out and lists it under
    ``"skipped"`` in the index with a ``read_error``/``decode_error`` reason. ``progress(done, total)``
    is called every ~0.1 % of the samples. ``workers`` threads read and encode; ``storage_options``
    (credentials, endpoints) are used to read remote source images and are not saved.
    """
    validate_name(name)
    opts = _options(
        config, selection, max_samples=max_samples, seed=seed, shard_max_bytes=shard_max_bytes,
        shard_max_samples=shard_max_samples, reencode_max_side=reencode_max_side, jpeg_quality=jpeg_quality,
        errors=errors, workers=workers,
    )  # fmt: skip
    opts["curation"] = curation  # lineage: the rules that chose the images, not only the table version
    parent_ids = _parent_ids(parents)
    table, images_version = _selection_and_version(catalog, selection)
    ordered, merged = order_selection(table, max_samples, seed)
    if ordered.num_rows == 0:
        raise ValueError(f"nothing to write for dataset {name!r}: the selection is empty")
    clean_stale_temp(catalog, name)
    version = next_version(catalog, name)
    meta = {
        "images_table_version": images_version,
        "parents": tuple(parent_ids),
        "config": opts,
        "duplicate_ids_merged": merged,
    }
    index = _write_version(catalog, name, version, ordered, meta, progress, storage_options)
    shards_uri = catalog.uri("datasets", name, f"v{version}")
    record = DatasetRecord(
        name=name, version=version, created_at=datetime.fromisoformat(str(index.created_at)),
        num_samples=index.num_samples, num_shards=index.num_shards, total_bytes=index.total_bytes,
        shards_uri=shards_uri, shard_pattern=str(index.brace_pattern),
        index_uri=posixpath.join(shards_uri, index_filename(name, version)),
        config_json=json.dumps(opts, sort_keys=True, default=str), images_table_version=images_version,
        parents=parent_ids, run_id=run_id,
    )  # fmt: skip
    register_dataset(catalog, record)  # LAST: the version becomes visible with this commit
    return record
