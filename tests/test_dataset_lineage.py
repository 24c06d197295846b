"""A dataset version records the curation settings that chose its images; `dataset show` and the
datasets export print them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from curation.config import CurateConfig
from curation.ingest import process_partition
from data_catalog.catalog import Catalog
from data_catalog.datasets import get_dataset
from data_catalog.images import IMAGES_SCHEMA, upsert_images
from flows.cli import app
from flows.settings import pipeline_config, save_pipeline_config


def _curate(catalog: Catalog, files: list[Path], run_id: str, overrides: list[str]) -> CurateConfig:
    """Ingest ``files`` with the settings of ``overrides`` and save that run's config, as the flow does."""
    cfg = pipeline_config(None, overrides, catalog=catalog.root)
    rows = process_partition([str(p) for p in files], "test", cfg.curate, run_id)
    upsert_images(catalog, rows.cast(IMAGES_SCHEMA), run_id)
    save_pipeline_config(cfg, run_id)
    return cfg.curate


def test_dataset_version_records_and_shows_its_curation_settings(
    imagenette_dir: Path, tmp_path: Path
) -> None:
    catalog = Catalog(str(tmp_path / "catalog"))
    files = sorted(imagenette_dir.rglob("*.JPEG"))
    _curate(catalog, files[:10], "curate-1", [])
    curate = _curate(
        catalog, files[10:20], "curate-2", ["curate.filter.min_side=80", "curate.dedup.phash_radius=4"]
    )
    runner = CliRunner()
    created = runner.invoke(app, ["dataset", "create", "--catalog", catalog.root, "--name", "web"])
    assert created.exit_code == 0, created.output

    recorded = get_dataset(catalog, "web", 1).config["curation"]
    assert recorded["run_id"] == "curate-2"  # the newest run: its settings are the ones in force
    assert recorded["curate"] == curate.model_dump(mode="json")
    assert recorded["curate"]["dedup"]["phash_radius"] == 4

    shown = runner.invoke(app, ["dataset", "show", "web:v1", "--catalog", catalog.root])
    assert shown.exit_code == 0, shown.output
    assert "phash_radius: 4" in shown.output and "min_side: 80" in shown.output
    assert "run_id: curate-2" in shown.output and "dataset web:v1" in shown.output
    as_json = runner.invoke(app, ["dataset", "show", "web:v1", "--catalog", catalog.root, "--json"])
    assert json.loads(as_json.output)["config"]["curation"]["curate"]["filter"]["min_side"] == 80
    missing = runner.invoke(app, ["dataset", "show", "web:v7", "--catalog", catalog.root])
    assert missing.exit_code == 2 and "not found" in missing.output and "Traceback" not in missing.output

    out = tmp_path / "datasets.parquet"
    exported = runner.invoke(
        app, ["catalog", "export", "datasets", "--catalog", catalog.root, "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    row = pq.read_table(out).to_pylist()[0]
    assert json.loads(row["config_json"])["curation"]["curate"]["dedup"]["phash_radius"] == 4
