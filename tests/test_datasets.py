"""The datasets and runs tables: versions, lineage, crash safety, export and the dataset CLI."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from typer.testing import CliRunner

from curation.dataset_version import clean_stale_temp, create_dataset_version
from curation.shards import shard_urls, verify_dataset
from data_catalog.catalog import Catalog
from data_catalog.datasets import (
    TABLE,
    DatasetRecord,
    get_dataset,
    parse_dataset_ref,
    read_datasets,
    register_dataset,
)
from data_catalog.export import export_table
from data_catalog.images import IMAGES_SCHEMA, accepted, upsert_images
from data_catalog.runs import get_run, read_runs, register_run
from data_catalog.shard_index import read_index


def ingest(catalog: Catalog, files: list[Path], run_id: str) -> int:
    """The real ingest stage (decode + quality filters) on ``files``; returns the images table version."""
    ingest_mod = pytest.importorskip("curation.ingest")
    from curation.config import CurateConfig

    rows = ingest_mod.process_partition([str(p) for p in files], "test", CurateConfig(), run_id)
    return upsert_images(catalog, rows.cast(IMAGES_SCHEMA), run_id)


@pytest.fixture()
def catalog(tmp_path: Path, imagenette_dir: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog")
    ingest(cat, sorted(imagenette_dir.rglob("*.JPEG"))[:30], "ingest-1")
    return cat


def keys(record: DatasetRecord) -> list[str]:
    return [s["__key__"] for s in wds.WebDataset(shard_urls(record), shardshuffle=False, empty_check=False)]


def test_parse_dataset_ref() -> None:
    assert parse_dataset_ref("curated") == ("curated", None)
    assert parse_dataset_ref("curated:3") == ("curated", 3)
    assert parse_dataset_ref("my-set_2:v12") == ("my-set_2", 12)
    for bad in ("curated:latest", "curated:v0", "a.b:1", "a/b", ""):
        with pytest.raises(ValueError):
            parse_dataset_ref(bad)


def test_versions_increment_with_lineage_and_old_versions_stay(
    catalog: Catalog, imagenette_dir: Path
) -> None:
    v1 = create_dataset_version(catalog, "curated", run_id="run-a", config={"note": "first"})
    assert (v1.version, v1.dataset_id, v1.images_table_version) == (1, "curated:v1", 0)
    assert v1.num_samples == accepted(catalog, columns=["uri"]).num_rows == 30
    images_v = ingest(catalog, sorted(imagenette_dir.rglob("*.JPEG"))[30:40], "ingest-2")
    with pytest.raises(ValueError, match="must name a version"):
        create_dataset_version(catalog, "curated", parents=["curated"])
    v2 = create_dataset_version(catalog, "curated", parents=["curated:1"], run_id="run-b")
    assert (v2.version, v2.images_table_version, v2.num_samples, v2.parents) == (
        2,
        images_v,
        40,
        ["curated:v1"],
    )
    assert get_dataset(catalog, "curated") == v2
    old = get_dataset(catalog, "curated", 1)
    assert old == v1 and sorted(keys(old)) == sorted(keys(v1)) and len(keys(old)) == 30
    assert set(keys(v1)) < set(keys(v2))
    assert (old.run_id, old.config["stage"], old.config["selection"]) == (
        "run-a",
        {"note": "first"},
        "accepted",
    )
    table = read_datasets(catalog)
    assert table.column("dataset_id").to_pylist() == ["curated:v1", "curated:v2"]
    # versions are immutable: every commit of the table only inserts (insert-if-absent merges)
    for commit in catalog.history(TABLE):
        metrics = commit.get("operationMetrics", {})
        assert commit["operation"] in {"WRITE", "CREATE TABLE", "MERGE"}, commit
        assert metrics.get("num_target_rows_updated", 0) == metrics.get("num_target_rows_deleted", 0) == 0
    assert verify_dataset(catalog, "curated", 1)["ok"] and verify_dataset(catalog, "curated")["ok"]


def test_unknown_dataset_error_lists_versions(catalog: Catalog) -> None:
    create_dataset_version(catalog, "curated", max_samples=3)
    with pytest.raises(KeyError, match=r"'curated:v7' not found.*existing versions: curated:v1"):
        get_dataset(catalog, "curated", 7)
    with pytest.raises(KeyError, match="existing versions: curated:v1"):
        get_dataset(catalog, "other")
    with pytest.raises(FileExistsError, match="already exists"):
        register_dataset(catalog, get_dataset(catalog, "curated"))


class Crash(RuntimeError):
    pass


def test_crash_mid_write_leaves_no_version(catalog: Catalog) -> None:
    def crash_after_12(done: int, total: int) -> None:
        if done == 12:
            raise Crash("killed")

    with pytest.raises(Crash):
        create_dataset_version(catalog, "curated", shard_max_samples=4, progress=crash_after_12)
    root = Path(catalog.uri("datasets", "curated"))
    assert not catalog.exists(TABLE) and read_datasets(catalog).num_rows == 0
    assert list(root.iterdir()) == []  # shards already closed were removed with their temp folder
    # a hard kill (no cleanup) leaves a temp folder: it is ignored, then removed once stale
    killed = root / ".tmp-v1-deadbeef0000"
    killed.mkdir()
    (killed / "curated-v1-000000.tar").write_bytes(b"partial")
    record = create_dataset_version(catalog, "curated", shard_max_samples=4)
    assert record.version == 1 and len(keys(record)) == 30 and verify_dataset(catalog, "curated")["ok"]
    assert clean_stale_temp(catalog, "curated", older_than_s=3600) == []
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    assert clean_stale_temp(catalog, "curated", older_than_s=3600) == [str(killed)]
    assert sorted(p.name for p in root.iterdir()) == ["v1"]


def test_a_version_folder_without_row_is_never_overwritten(catalog: Catalog) -> None:
    orphan = Path(catalog.uri("datasets", "curated", "v1"))  # killed between the move and the commit
    orphan.mkdir(parents=True)
    (orphan / "marker").write_text("left by a killed write")
    record = create_dataset_version(catalog, "curated", max_samples=5)
    assert record.version == 2 and (orphan / "marker").read_text() == "left by a killed write"


def test_unreadable_samples_raise_or_are_listed(catalog: Catalog, tmp_path: Path) -> None:
    table = accepted(catalog, columns=["image_id", "uri"]).slice(0, 5)
    (tmp_path / "text.jpg").write_text("not an image")
    broken = pa.table(
        {"image_id": ["f" * 64, "e" * 64], "uri": [str(tmp_path / "gone.jpg"), str(tmp_path / "text.jpg")]}
    ).cast(table.schema)
    selection = pa.concat_tables([table, broken])
    with pytest.raises(RuntimeError, match="gone.jpg"):
        create_dataset_version(catalog, "picked", selection=selection)
    assert read_datasets(catalog).num_rows == 0
    record = create_dataset_version(catalog, "picked", selection=selection, errors="skip")
    skipped = read_index(record.index_uri).skipped
    assert record.num_samples == 5 and len(keys(record)) == 5
    reasons = {s["image_id"]: (s["reason"], s["detail"]) for s in skipped}
    assert reasons["f" * 64][0] == "read_error" and "gone.jpg" in reasons["f" * 64][1]
    assert reasons["e" * 64][0] == "decode_error" and "UnidentifiedImageError" in reasons["e" * 64][1]
    with pytest.raises(ValueError, match="choose one of"):
        create_dataset_version(catalog, "picked", selection=selection, errors="ignore")


def test_runs_table_upserts_and_keeps_unset_fields(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    register_run(
        catalog,
        {"run_id": "r1", "kind": "pretrain", "dataset": "curated", "dataset_version": 2, "status": "running",
         "started_at": started, "config_json": "{}", "output_dir": "/runs/r1"},
    )  # fmt: skip
    register_run(catalog, {"run_id": "r1", "status": "completed", "steps": 100, "last_loss": 1.5,
                           "finished_at": datetime.now(UTC)})  # fmt: skip
    register_run(catalog, {"run_id": "r2", "status": "failed", "started_at": datetime.now(UTC)})
    run = get_run(catalog, "r1")
    assert (run["status"], run["steps"], run["last_loss"], run["started_at"]) == (
        "completed",
        100,
        1.5,
        started,
    )
    assert (run["dataset"], run["dataset_version"], run["output_dir"]) == ("curated:v2", 2, "/runs/r1")
    assert read_runs(catalog).column("run_id").to_pylist() == ["r1", "r2"]
    with pytest.raises(ValueError, match="not one of"):
        register_run(catalog, {"run_id": "r3", "status": "exploded"})
    with pytest.raises(ValueError, match="unknown fields"):
        register_run(catalog, {"run_id": "r3", "status": "running", "colour": "red"})
    with pytest.raises(KeyError, match="known runs"):
        get_run(catalog, "nope")


def test_export_round_trips(catalog: Catalog, tmp_path: Path) -> None:
    create_dataset_version(catalog, "curated", max_samples=4)
    create_dataset_version(catalog, "curated", max_samples=6, parents=["curated:v1", "other:v3"])
    register_run(catalog, {"run_id": "r1", "status": "running", "started_at": datetime.now(UTC)})
    for name in ("images", "datasets", "runs"):
        original = {"images": accepted(catalog).num_rows, "datasets": 2, "runs": 1}[name]
        assert export_table(catalog, name, tmp_path / f"{name}.parquet") >= original
        back = pq.read_table(tmp_path / f"{name}.parquet")
        assert back.num_rows >= original and back.num_rows == export_table(
            catalog, name, tmp_path / f"{name}.csv"
        )
    assert pq.read_table(tmp_path / "datasets.parquet").equals(read_datasets(catalog))
    csv = pacsv.read_csv(tmp_path / "datasets.csv")
    assert [json.loads(p) for p in csv.column("parents").to_pylist()] == [[], ["curated:v1", "other:v3"]]
    assert csv.column("dataset_id").to_pylist() == ["curated:v1", "curated:v2"]
    assert export_table(catalog, "images", tmp_path / "old.parquet", version=0) == 30
    with pytest.raises(
        ValueError, match=r"unknown table 'nonsense'.*valid tables: \[.*'datasets'.*'images'.*'runs'\]"
    ):
        export_table(catalog, "nonsense", tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"\['.csv', '.parquet'\]"):
        export_table(catalog, "runs", tmp_path / "x.xlsx")
    assert not list(tmp_path.glob("*.tmp-*"))


def test_dataset_cli_create_list_verify(catalog: Catalog) -> None:
    from flows.cli_dataset import dataset_app

    runner = CliRunner()
    args = ["--catalog", catalog.root, "--name", "cli", "--max-samples", "10", "--seed", "3"]
    result = runner.invoke(
        dataset_app, ["create", *args, "--shard-max-bytes", "200000", "--reencode-max-side", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "cli:v1" in result.output and "10 samples" in result.output
    record = get_dataset(catalog, "cli")
    assert record.config["reencode_max_side"] == 64 and record.config["seed"] == 3
    listed = runner.invoke(dataset_app, ["list", "--catalog", catalog.root, "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["dataset_id"] == "cli:v1"
    assert "cli:v1" in runner.invoke(dataset_app, ["list", "--catalog", catalog.root]).output
    verified = runner.invoke(dataset_app, ["verify", "cli:v1", "--catalog", catalog.root])
    assert verified.exit_code == 0 and "ok" in verified.output
    missing = runner.invoke(dataset_app, ["verify", "cli:v9", "--catalog", catalog.root])
    assert missing.exit_code != 0
