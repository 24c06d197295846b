"""The ``embeddings`` table: one L2-normalised vector per (``image_id``, ``model_id``).

``image_id`` is the sha256 of an image's bytes (the images table's), ``model_id`` names the embedder's
architecture and weights (``pretrain.models.descriptors``: ``kind/arch@sha256[:12]``), so vectors of
two models never mix and a re-trained model embeds again. Rows are immutable: a write inserts the
keys not in the table yet (``Catalog.insert_new``, one commit, safe beside concurrent writers) and
leaves existing ones alone.

Delta Lake has no float16 type and no fixed-size lists, so a vector is stored as its raw
little-endian bytes in a ``binary`` column, with its ``dtype`` (``float16`` by default: 2 bytes per
dimension, 768 B for a 384-d vector; or ``float32``) and ``dim`` beside it. float16 keeps about 3
significant digits: a unit vector's components round with a relative error <= 2**-11, so cosines
move by well under 1e-3 (measured in ``tests/test_embed_table.py``), far below any threshold's
resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "embeddings"
KEY = ("image_id", "model_id")
DTYPES: dict[str, np.dtype[np.floating]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
_TS = pa.timestamp("us", tz="UTC")

EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # sha256 of the image bytes (key, with model_id)
        pa.field("model_id", pa.string(), nullable=False),  # the embedder: kind/arch@weights digest
        pa.field("vector", pa.binary(), nullable=False),  # dim values of dtype, little-endian, norm 1
        pa.field("dtype", pa.string(), nullable=False),  # "float16" | "float32"
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("run_id", pa.string()),  # the run that embedded it
        pa.field("created_at", _TS),
    ]
)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of norm 1; a non-finite or all-zero row is a one-line ValueError."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"write_embeddings: vectors must be [N, D] with D > 0, got shape {x.shape}")
    bad = np.logical_not(np.isfinite(x).all(axis=1))
    norms = np.linalg.norm(np.where(bad[:, None], 0.0, x), axis=1)
    bad |= norms == 0
    if bad.any():
        raise ValueError(
            f"write_embeddings: {int(bad.sum())} vector(s) are non-finite or zero (first at row "
            f"{int(np.flatnonzero(bad)[0])}); they cannot be L2-normalised"
        )
    return x / norms[:, None]


def write_embeddings(
    catalog: Catalog,
    model_id: str,
    image_ids: Sequence[str],
    vectors: np.ndarray,
    run_id: str,
    dtype: str = "float16",
) -> int:
    """Store ``vectors`` [N, D] (any float dtype; L2-normalised here) for ``image_ids`` (N distinct)
    under ``model_id``, as ``dtype``, in one commit; keys already stored are left as they are.
    Returns the number of rows inserted."""
    if dtype not in DTYPES:
        raise ValueError(f"write_embeddings: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not model_id:
        raise ValueError("write_embeddings: model_id is empty")
    ids = [str(i) for i in image_ids]
    x = _normalised(vectors) if len(ids) else np.zeros((0, 1), np.float32)
    if len(ids) != x.shape[0]:
        raise ValueError(f"write_embeddings: {len(ids)} image ids for {x.shape[0]} vectors")
    if len(set(ids)) != len(ids):
        raise ValueError("write_embeddings: an image id appears twice in one write")
    if not ids:
        return 0
    n, dim = x.shape
    raw = np.ascontiguousarray(x.astype(DTYPES[dtype]))
    width = dim * raw.itemsize
    offsets = pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32).tobytes())
    vector = pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(raw.tobytes())])
    now = datetime.now(UTC)
    data = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "model_id": pa.array([model_id] * n, pa.string()),
            "vector": vector,
            "dtype": pa.array([dtype] * n, pa.string()),
            "dim": pa.array(np.full(n, dim, np.int32)),
            "run_id": pa.array([run_id] * n, pa.string()),
            "created_at": pa.array([now] * n, _TS),
        },
        schema=EMBEDDINGS_SCHEMA,
    )
    _, inserted = catalog.insert_new(
        TABLE, data, EMBEDDINGS_SCHEMA, key=KEY, metadata={"run_id": run_id, "model_id": model_id}
    )
    return inserted


def _contiguous(arr: pa.Array, dtype: np.dtype, dim: int) -> np.ndarray:
    """[N, dim] float32 of a large_binary array whose values all hold ``dim`` values of ``dtype``."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    width = dim * dtype.itemsize
    if not np.array_equal(np.diff(offsets), np.full(len(arr), width)):
        raise ValueError(f"embeddings: a {dtype.name} vector is not {dim}-dimensional ({width} bytes)")
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view(dtype).reshape(len(arr), dim).astype(np.float32)


def _decode(vectors: pa.ChunkedArray, dtypes: pa.ChunkedArray, dims: pa.ChunkedArray) -> np.ndarray:
    """[N, D] float32 from the binary column (all rows of one ``dim``; dtypes may differ by row)."""
    distinct = pc.unique(dims).to_pylist()
    if len(distinct) > 1:
        raise ValueError(f"embeddings of one model have several dimensions: {sorted(distinct)}")
    dim = int(distinct[0])
    arr = vectors.cast(pa.large_binary()).combine_chunks()
    kinds = dtypes.combine_chunks()
    out = np.empty((len(arr), dim), np.float32)
    for name in pc.unique(kinds).to_pylist():
        if name not in DTYPES:
            raise ValueError(f"embeddings: unknown stored dtype {name!r}")
        rows = pc.indices_nonzero(pc.equal(kinds, name))
        part = arr if len(rows) == len(arr) else arr.take(rows)  # take: contiguous values again
        out[rows.to_numpy()] = _contiguous(part, DTYPES[name], dim)
    return out


def _rows(catalog: Catalog, model_id: str, columns: list[str]) -> pa.Table:
    """``columns`` of ``model_id``'s rows (filtered while scanning: other models' rows are not held)."""
    table = catalog.read(
        TABLE,
        EMBEDDINGS_SCHEMA,
        columns=["model_id", *columns],
        where=pc.field("model_id") == pa.scalar(model_id),
    )
    return table.select(columns)


def read_embeddings(
    catalog: Catalog, model_id: str, image_ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [N] of str, vectors [N, D] float32, rows of norm 1 up to float16 rounding)`` of
    ``model_id``: every stored image sorted by id, or ``image_ids`` in their order (repeats allowed).
    An id without a vector for this model is a one-line ``KeyError`` giving the count and the first."""
    table = _rows(catalog, model_id, ["image_id", "vector", "dtype", "dim"])
    stored = table.column("image_id").cast(pa.string())
    if image_ids is None:
        order = pc.sort_indices(stored)
    else:
        wanted = pa.array([str(i) for i in image_ids], pa.string())
        order = pc.index_in(wanted, value_set=stored.combine_chunks())
        if order.null_count:
            missing = wanted.filter(order.is_null())
            raise KeyError(
                f"{len(missing)} of {len(wanted)} image ids have no {model_id!r} embedding in catalog "
                f"{catalog.root} (first: {missing[0].as_py()}); embed them first"
            )
    if len(order) == 0:
        return np.asarray([], dtype=str), np.zeros((0, 0), np.float32)
    picked = table.take(order)
    ids = np.asarray(picked.column("image_id").cast(pa.string()).to_pylist(), dtype=str)
    return ids, _decode(picked.column("vector"), picked.column("dtype"), picked.column("dim"))


def embedded_table(catalog: Catalog, model_id: str) -> pa.Table:
    """The ``image_id`` column of every image embedded by ``model_id`` (an arrow table: a join
    operand that stays compact at millions of ids)."""
    return _rows(catalog, model_id, ["image_id"])


def embedded_ids(catalog: Catalog, model_id: str) -> set[str]:
    """The image ids that have a vector for ``model_id``."""
    return set(embedded_table(catalog, model_id).column("image_id").to_pylist())


def model_counts(catalog: Catalog) -> dict[str, int]:
    """Vectors stored per model id (what the stage's report lists)."""
    table = catalog.read(TABLE, EMBEDDINGS_SCHEMA, columns=["model_id"])
    if table.num_rows == 0:
        return {}
    counts = table.group_by("model_id").aggregate([("model_id", "count")])
    return dict(
        zip(counts.column("model_id").to_pylist(), counts.column("model_id_count").to_pylist(), strict=True)
    )


def export_embeddings(catalog: Catalog, version: int | None = None) -> pa.Table:
    """The whole table (or a ``version`` of it) with each ``vector`` decoded to a list of float32
    (``dinoflow catalog export embeddings``: parquet keeps lists, CSV writes them as JSON)."""
    table = catalog.read(TABLE, EMBEDDINGS_SCHEMA, version=version)
    table = table.cast(EMBEDDINGS_SCHEMA).sort_by([("model_id", "ascending"), ("image_id", "ascending")])
    parts = []
    for model_id in pc.unique(table.column("model_id")).to_pylist():
        rows = table.filter(pc.equal(table.column("model_id"), model_id))
        x = _decode(rows.column("vector"), rows.column("dtype"), rows.column("dim"))
        offsets = pa.array(np.arange(len(x) + 1, dtype=np.int32) * x.shape[1])
        vectors = pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), pa.float32()))
        parts.append(rows.set_column(rows.schema.get_field_index("vector"), "vector", vectors))
    if not parts:
        schema = EMBEDDINGS_SCHEMA.set(2, pa.field("vector", pa.list_(pa.float32())))
        return schema.empty_table()
    return pa.concat_tables(parts)
