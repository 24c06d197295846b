"""Export a catalog table to one parquet or CSV file (for spreadsheets, DuckDB, pandas, ...).

CSV cannot hold lists: list columns (``datasets.parents``) are written as JSON strings there.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_catalog.catalog import Catalog
from data_catalog.clusters import read_clusters
from data_catalog.datasets import read_datasets
from data_catalog.embeddings import export_embeddings
from data_catalog.evaluations import read_evaluations
from data_catalog.images import read_images
from data_catalog.matches import MATCHES_SCHEMA
from data_catalog.matches import TABLE as MATCHES
from data_catalog.runs import read_runs

READERS: dict[str, Callable[[Catalog, int | None], pa.Table]] = {
    "images": lambda catalog, version: read_images(catalog, version=version),
    "datasets": read_datasets,
    "runs": read_runs,
    "evaluations": read_evaluations,
    "clusters": lambda catalog, version: read_clusters(catalog, version=version),
    "embeddings": export_embeddings,  # vectors as lists of float32
    MATCHES: lambda catalog, version: catalog.read(MATCHES, MATCHES_SCHEMA, version=version),
}


def _write_parquet(table: pa.Table, f: object) -> None:
    pq.write_table(table, f)


def _write_csv(table: pa.Table, f: object) -> None:
    pacsv.write_csv(lists_as_json(table), f)


WRITERS: dict[str, Callable[[pa.Table, object], None]] = {".parquet": _write_parquet, ".csv": _write_csv}


def lists_as_json(table: pa.Table) -> pa.Table:
    """``table`` with every list column replaced by JSON strings (null stays null)."""
    for i, fld in enumerate(table.schema):
        if pa.types.is_list(fld.type) or pa.types.is_large_list(fld.type):
            values = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(fld.name, pa.string()), pa.array(values, pa.string()))
    return table


def export_table(
    catalog: Catalog, table_name: str, out_path: str | os.PathLike[str], version: int | None = None
) -> int:
    """Write table ``table_name`` (at table ``version``, newest when None) to ``out_path``. Returns rows.

    The format follows the extension (``.parquet`` or ``.csv``); the file appears atomically
    (written under a temporary name, then renamed). ``out_path`` may be an fsspec URL.
    """
    if table_name not in READERS:
        raise ValueError(f"unknown table {table_name!r}; valid tables: {sorted(READERS)}")
    out = os.fspath(out_path)
    suffix = Path(out.split("://", 1)[-1]).suffix.lower()
    if suffix not in WRITERS:
        raise ValueError(f"cannot export to {out!r}: the extension must be one of {sorted(WRITERS)}")
    table = READERS[table_name](catalog, version)
    fs, path = fsspec.core.url_to_fs(out)
    parent = os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as f:
            WRITERS[suffix](table, f)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return table.num_rows
