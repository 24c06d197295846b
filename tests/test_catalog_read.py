"""Reading catalog tables from a plain Python process: right rows, and a clean exit.

pyarrow's reader threads calling back into a Python-backed filesystem (deltalake's object-store
handler, fsspec files) abort the interpreter at exit: "terminate called without an active
exception", exit 134, after the work is done. It hit 6 of 10 processes reading a 5,000-row table
through ``DeltaTable.to_pyarrow_table``; a user's script, a Prefect flow process or a torchrun
rank that reads the catalog would "fail" at random.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks.bench_catalog import synthetic_rows
from curation.ingest import commit_ingest
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, read_images, upsert_images

REPO = Path(__file__).resolve().parents[1]
RUNS = 6  # with the abort, all 6 exiting cleanly had a chance of about 0.4**6 = 0.4%

READER = textwrap.dedent(
    """
    import sys
    from data_catalog.catalog import Catalog
    from data_catalog.images import read_images
    catalog = Catalog(sys.argv[1])
    assert read_images(catalog).num_rows == int(sys.argv[2])
    assert read_images(catalog, columns=["uri", "status"]).column_names == ["uri", "status"]
    assert read_images(catalog, version=0).num_rows == int(sys.argv[3])
    print("read ok")
    """
)


def _assert_clean_exits(root: str, rows: int, first: int, env: dict[str, str] | None = None) -> None:
    for _ in range(RUNS):
        done = subprocess.run(
            [sys.executable, "-c", READER, root, str(rows), str(first)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and "read ok" in done.stdout, (done.returncode, done.stderr[-2000:])
        assert "terminate called" not in done.stderr


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "catalog")
    upsert_images(catalog, synthetic_rows(range(0, 4000), "a"), "a")
    upsert_images(catalog, synthetic_rows(range(4000, 5000), "b"), "b")
    return catalog


def test_local_reads_are_right_and_exit_cleanly(catalog: Catalog) -> None:
    table = read_images(catalog)
    assert table.num_rows == 5000 and table.schema == IMAGES_SCHEMA
    assert read_images(catalog, version=0).num_rows == 4000
    _assert_clean_exits(catalog.root, 5000, 4000)


def test_where_filters_rows_while_scanning(catalog: Catalog) -> None:
    wanted = synthetic_rows(range(3990, 4010), "x").column("uri")  # across both commits' files
    got = read_images(catalog, where=pc.field("uri").isin(wanted))
    assert sorted(got.column("uri").to_pylist()) == sorted(wanted.to_pylist())
    assert got.schema == IMAGES_SCHEMA
    assert read_images(catalog, version=0, where=pc.field("uri").isin(wanted)).num_rows == 10
    assert (
        read_images(catalog, columns=["uri", "status"], where=pc.field("status") == "duplicate").num_rows == 0
    )


def test_ingest_commit_reads_staging_and_exits_cleanly(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    staged = []
    for i in range(3):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(synthetic_rows(range(i * 1000, (i + 1) * 1000), "r"), path)
        staged.append(str(path))
    script = "import sys, json; from curation.ingest import commit_ingest; from data_catalog.catalog import Catalog; "
    script += "print(commit_ingest(Catalog(sys.argv[1]), json.loads(sys.argv[2]), 'r'))"

    done = subprocess.run(
        [sys.executable, "-c", script, catalog.root, json.dumps(staged)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_images(catalog).num_rows == 3000
    # a second commit of the same staged rows changes nothing (keyed on uri)
    commit_ingest(catalog, staged, "r")
    assert read_images(catalog).num_rows == 3000
    assert pa.compute.count_distinct(read_images(catalog, columns=["uri"]).column("uri")).as_py() == 3000
