"""The ``datasets`` table: one row per immutable dataset version (webdataset shards + index + lineage).

A dataset version is named ``NAME:vN`` (its ``dataset_id``); versions count 1, 2, ... per name. The
row is the version's only point of visibility: the shard writer (``curation.dataset_version``)
commits it LAST, after every shard and the index are in place, so a killed write leaves no version.
Shards live in ``CATALOG/datasets/NAME/vN/`` as ``NAME-vN-000000.tar`` ... beside
``NAME-vN.index.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "datasets"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TS = pa.timestamp("us", tz="UTC")

DATASETS_SCHEMA = pa.schema(
    [
        pa.field("dataset_id", pa.string(), nullable=False),  # "NAME:vN", the key
        pa.field("name", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),  # 1, 2, ... per name
        pa.field("created_at", _TS),
        pa.field("num_samples", pa.int64()),
        pa.field("num_shards", pa.int64()),
        pa.field("total_bytes", pa.int64()),  # sum of the tar files' sizes
        pa.field("shards_uri", pa.string()),  # the version's folder
        pa.field("shard_pattern", pa.string()),  # brace pattern, relative: NAME-vN-{000000..000012}.tar
        pa.field("index_uri", pa.string()),  # NAME-vN.index.json (absolute)
        pa.field("config_json", pa.string()),  # the resolved config that made this version
        pa.field("images_table_version", pa.int64()),  # lineage: images table version it was made from
        pa.field("parents", pa.list_(pa.string())),  # lineage: parent dataset ids ("NAME:vN")
        pa.field("run_id", pa.string()),  # the pipeline run that wrote it
    ]
)


@dataclass(frozen=True)
class DatasetRecord:
    """One row of ``datasets`` (field names and meanings as in ``DATASETS_SCHEMA``)."""

    name: str
    version: int
    created_at: datetime
    num_samples: int
    num_shards: int
    total_bytes: int
    shards_uri: str
    shard_pattern: str
    index_uri: str
    config_json: str = "{}"
    images_table_version: int | None = None
    parents: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def dataset_id(self) -> str:
        return dataset_id(self.name, self.version)

    @property
    def ref(self) -> str:
        """``NAME:vN``, what ``--dataset`` and ``parents`` take."""
        return self.dataset_id

    @property
    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.config_json or "{}"))

    def to_row(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, **asdict(self)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DatasetRecord:
        values: dict[str, Any] = {k: row.get(k) for k in cls.__dataclass_fields__}
        values["parents"] = list(values.get("parents") or [])
        return cls(**values)


def dataset_id(name: str, version: int) -> str:
    return f"{name}:v{int(version)}"


def validate_name(name: str) -> str:
    """Dataset names become folder and shard-file names: letters, digits, ``_`` and ``-`` only."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(
            f"dataset name {name!r} is not valid: use letters, digits, '_' and '-' "
            "(no dots, colons, slashes or spaces), starting with a letter or digit"
        )
    return name


def parse_dataset_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None); ``"name:3"`` or ``"name:v3"`` -> (name, 3)."""
    name, _, version = ref.strip().partition(":")
    validate_name(name)
    if not version:
        return name, None
    digits = version[1:] if version[:1] in ("v", "V") else version
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(
            f"dataset version {version!r} of {ref!r} is not a positive number (NAME:3 or NAME:v3)"
        )
    return name, int(digits)


def read_datasets(catalog: Catalog, version: int | None = None) -> pa.Table:
    """The whole table (optionally at an older table ``version``), sorted by name then version."""
    table = catalog.read(TABLE, DATASETS_SCHEMA, version=version)
    if table.num_rows == 0:
        return table
    return table.sort_by([("name", "ascending"), ("version", "ascending")])


def versions(catalog: Catalog, name: str) -> list[int]:
    """Committed versions of ``name``, ascending."""
    table = catalog.read(TABLE, DATASETS_SCHEMA, columns=["name", "version"])
    rows = table.filter(pc.equal(table.column("name"), name))
    return sorted(int(v) for v in rows.column("version").to_pylist())


def get_dataset(catalog: Catalog, name: str, version: int | None = None) -> DatasetRecord:
    """The record of ``name`` at ``version`` (the newest when None); a clear error when absent."""
    table = read_datasets(catalog)
    rows = [r for r in table.to_pylist() if r["name"] == name]
    if version is not None:
        rows = [r for r in rows if r["version"] == version]
    if not rows:
        existing = sorted({f"{r['name']}:v{r['version']}" for r in table.to_pylist()})
        wanted = name if version is None else dataset_id(name, version)
        raise KeyError(
            f"dataset {wanted!r} not found in catalog {catalog.root}; existing versions: "
            f"{', '.join(existing) if existing else 'none (write one with `dinoflow dataset create`)'}"
        )
    return DatasetRecord.from_row(max(rows, key=lambda r: r["version"]))


def register_dataset(catalog: Catalog, record: DatasetRecord) -> int:
    """Commit ``record`` as one new row (the moment the version becomes visible). Returns the table version.

    Versions are immutable: registering an existing ``NAME:vN`` again raises.
    """
    validate_name(record.name)
    row = pa.Table.from_pylist([record.to_row()], schema=DATASETS_SCHEMA)
    # insert-if-absent on dataset_id, not a blind append: of two writers racing to register the
    # same NAME:vN, exactly one row lands and the other gets this error
    version, inserted = catalog.insert_new(
        TABLE, row, DATASETS_SCHEMA, key="dataset_id", metadata={"dataset": record.dataset_id}
    )
    if inserted != 1:
        raise FileExistsError(f"dataset {record.dataset_id} already exists in catalog {catalog.root}")
    return version
