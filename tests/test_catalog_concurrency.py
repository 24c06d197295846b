"""Several processes writing one catalog at once: no commit conflict crashes a writer, no row is lost.

Found for real: two training runs started together crashed at start-up registering themselves in
the ``runs`` table (deltalake ``CommitFailedError``: a concurrent transaction added new data).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from data_catalog.catalog import Catalog
from data_catalog.datasets import DatasetRecord, read_datasets, register_dataset
from data_catalog.runs import RUNS_SCHEMA, register_run
from data_catalog.runs import TABLE as RUNS

WRITERS = 4


def _register_runs(args: tuple[str, int]) -> str:
    root, writer = args
    try:
        for i in range(4):
            register_run(Catalog(root), {"run_id": f"w{writer}-r{i}", "status": "running"})
            register_run(Catalog(root), {"run_id": f"w{writer}-r{i}", "status": "completed"})
    except Exception as exc:  # deltalake's errors do not pickle: report them as text
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _register_same_version(args: tuple[str, int]) -> str:
    root, writer = args
    record = DatasetRecord(
        name="shared", version=1, created_at=datetime.now(UTC), num_samples=writer, num_shards=1,
        total_bytes=1, shards_uri=f"{root}/datasets/shared/v1", shard_pattern="shared-v1-000000.tar",
        index_uri=f"{root}/datasets/shared/v1/shared-v1.index.json", run_id=f"writer-{writer}",
    )  # fmt: skip
    try:
        register_dataset(Catalog(root), record)
    except FileExistsError:
        return "exists"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "registered"


def _pool_map(fn, jobs):  # type: ignore[no-untyped-def]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        return pool.map(fn, jobs)


def test_concurrent_run_registrations_all_land(tmp_path: Path) -> None:
    root = str(tmp_path / "catalog")
    results = _pool_map(_register_runs, [(root, w) for w in range(WRITERS)])
    assert results == ["ok"] * WRITERS, results
    runs = Catalog(root).read(RUNS, RUNS_SCHEMA).to_pylist()
    assert sorted(r["run_id"] for r in runs) == sorted(f"w{w}-r{i}" for w in range(WRITERS) for i in range(4))
    assert {r["status"] for r in runs} == {"completed"}  # the later update of every run won


def test_racing_registrations_of_one_dataset_version_keep_exactly_one(tmp_path: Path) -> None:
    root = str(tmp_path / "catalog")
    results = _pool_map(_register_same_version, [(root, w) for w in range(WRITERS)])
    assert sorted(results) == ["exists"] * (WRITERS - 1) + ["registered"], results
    rows = read_datasets(Catalog(root)).to_pylist()
    assert [r["dataset_id"] for r in rows] == ["shared:v1"]
    winner = results.index("registered")
    assert rows[0]["run_id"] == f"writer-{winner}"


def test_upsert_reports_its_own_commit_version(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "catalog"))
    schema = pa.schema([pa.field("k", pa.string(), nullable=False), pa.field("v", pa.int64())])
    assert catalog.upsert("t", pa.table({"k": ["a"], "v": [1]}), schema, key="k") == 0
    assert catalog.upsert("t", pa.table({"k": ["a"], "v": [2]}), schema, key="k") == 1
    assert catalog.read("t", schema).to_pylist() == [{"k": "a", "v": 2}]
    assert catalog.read("t", schema, version=0).to_pylist() == [{"k": "a", "v": 1}]


def _commit_staged(args: tuple[str, list[str], int, float]) -> str:
    from curation.ingest import commit_ingest

    root, staged, writer, start_at = args
    while time.time() < start_at:  # all writers commit at the same moment (measured: 1-2 retries each)
        time.sleep(0.001)
    try:
        commit_ingest(Catalog(root), staged, f"run-{writer}")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_racing_ingest_commits_of_one_folder_keep_one_row_per_uri(tmp_path: Path) -> None:
    """Two nightly runs (or a manual one) committing the same new folder at once, into a catalog
    whose older nights sit in their own files: the merge prunes those files by key range, and must
    still see the other writer's rows (a commit conflict, then a retry), never duplicate a uri."""
    import pyarrow.parquet as pq

    from benchmarks.bench_catalog import synthetic_rows
    from data_catalog.images import read_images, upsert_images

    root = str(tmp_path / "catalog")
    for night in range(3):  # older nights, one commit (one file) each
        upsert_images(
            Catalog(root), synthetic_rows(range(night * 2000, (night + 1) * 2000), "old", f"n{night}"), "old"
        )
    staged = str(tmp_path / "tonight.parquet")
    pq.write_table(synthetic_rows(range(10_000, 11_000), "tonight", "tonight"), staged)
    start_at = time.time() + 5  # after the spawned interpreters have started
    results = _pool_map(_commit_staged, [(root, [staged], w, start_at) for w in range(WRITERS)])
    assert results == ["ok"] * WRITERS, results
    uris = read_images(Catalog(root), columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 7000


def test_racing_first_commits_into_an_empty_catalog_keep_one_row_per_uri(tmp_path: Path) -> None:
    """The first ingest streams into a new table; writers that lose the race to create it merge
    into the winner's table instead, so every uri still has exactly one row."""
    import pyarrow.parquet as pq

    from benchmarks.bench_catalog import synthetic_rows
    from data_catalog.images import read_images

    root = str(tmp_path / "catalog")
    staged = [str(tmp_path / f"part-{i}.parquet") for i in range(2)]
    for i, path in enumerate(staged):
        pq.write_table(synthetic_rows(range(i * 1000, (i + 1) * 1000), "first", "first"), path)
    start_at = time.time() + 5
    results = _pool_map(_commit_staged, [(root, staged, w, start_at) for w in range(WRITERS)])
    assert results == ["ok"] * WRITERS, results
    uris = read_images(Catalog(root), columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 2000
