"""Nightly runs of ``curate-and-pretrain``: what a night with nothing new skips, what a killed run
left that the next one reuses, and where a night's pretraining starts from.

- **Nothing new**: no new file in the source and the catalog as the newest dataset version of
  ``dataset.name`` recorded it (images table at that version, same curation and dataset settings):
  nothing to embed, dedup, cluster or write. The night goes on to what is unfinished (a run killed
  mid-training resumes, a missing evaluation is made) and otherwise ends.
- **A killed ingest**: its staged partitions (``runs/<run_id>/staging``, never committed) are moved
  under the new run's id when they hold exactly a planned partition's uris and the killed run had
  the same curate settings, so finished partitions are not decoded again (and not left behind).
- **Continued pretraining** (``pretrain.continue_from: last``): a new run starts its student and
  teacher from the exported teacher of the newest completed run of the same architecture
  (``model.init_backbone``; heads, optimizer state and schedules start fresh).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from curation import ingest
from data_catalog.catalog import Catalog
from data_catalog.datasets import get_dataset
from flows.config import PipelineConfig, PretrainStageConfig
from flows.settings import PIPELINE_FILE


def unchanged_since(config: PipelineConfig) -> str | None:
    """The newest version ``NAME:vN`` of ``dataset.name`` when the catalog is still as that version
    recorded it (same images table version, curation and dataset settings), else None."""
    catalog = Catalog(config.catalog)
    if not config.dataset.enabled or not catalog.exists("datasets"):
        return None
    try:
        record = get_dataset(catalog, config.dataset.name)
    except KeyError:
        return None
    saved = record.config
    stage = {k: v for k, v in (saved.get("stage") or {}).items() if k != "selection"}
    same = (
        record.images_table_version == catalog.version("images")
        and stage == config.dataset.model_dump(mode="json")
        and (saved.get("curation") or {}).get("curate") == config.curate.model_dump(mode="json")
    )
    return record.ref if same else None


def _killed_runs(catalog: Catalog, config: PipelineConfig, run_id: str) -> list[str]:
    """Run ids with staging files that never reached the images table, run with these curate settings."""
    fs, root = catalog.filesystem(), catalog.uri("runs")
    if not fs.exists(root):
        return []
    committed = {h.get("run_id") for h in catalog.history("images")}
    out = []
    for path in sorted(fs.ls(root, detail=False)):
        other = path.rstrip("/").rsplit("/", 1)[-1]
        if other in committed or other == run_id or not fs.exists(f"{path}/staging"):
            continue
        saved_uri = f"{path}/{PIPELINE_FILE}"
        saved = yaml.safe_load(fs.cat_file(saved_uri).decode()) if fs.exists(saved_uri) else None
        if (saved or {}).get("curate") == config.curate.model_dump(mode="json"):
            out.append(other)
    return out


def _staged(fs: Any, path: str) -> pa.Table | None:
    """A finished staging file's rows, or None (a temporary file, or one damaged by the kill)."""
    if not path.rsplit("/", 1)[-1].startswith("part-"):
        return None
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, use_threads=False)
    except Exception:  # noqa: BLE001 - a damaged file is simply staged again
        return None


def adopt_staging(config: PipelineConfig, plans: list[list[str]], run_id: str) -> int:
    """Move a killed run's staged partitions that match a planned partition under ``run_id`` (their
    rows now name ``run_id``); ``ingest-partition`` then finds them done. The rest of a killed run's
    staging (temporary files, partitions of another plan) is removed. Returns how many moved."""
    catalog = Catalog(config.catalog)
    fs, wanted = catalog.filesystem(), {frozenset(p): i for i, p in enumerate(plans)}
    moved = 0
    for other in _killed_runs(catalog, config, run_id):
        staging = catalog.uri("runs", other, "staging")
        for path in sorted(fs.ls(staging, detail=False)):
            table = _staged(fs, path)
            index = None if table is None else wanted.pop(frozenset(table.column("uri").to_pylist()), None)
            if table is None or index is None:
                continue
            ids = pa.array([run_id] * table.num_rows, pa.string())
            for column in ("run_id", "first_run_id"):
                table = table.set_column(table.schema.get_field_index(column), column, ids)
            ingest.write_staged(catalog, table, ingest.staging_path(catalog, run_id, index))
            moved += 1
        fs.rm(staging, recursive=True)
    return moved


def _run_row(catalog: Catalog, run_id: str) -> dict[str, Any] | None:
    from data_catalog.runs import read_runs

    runs = read_runs(catalog) if catalog.exists("runs") else None
    if runs is None or runs.num_rows == 0:
        return None
    rows = runs.filter(pc.equal(runs.column("run_id"), run_id)).to_pylist()
    return rows[0] if rows else None


def run_completed(catalog: str, run_dir: Path) -> bool:
    """The run of ``run_dir`` (its run id is the directory's name) is registered ``completed``."""
    row = _run_row(Catalog(catalog), run_dir.name)
    return row is not None and row["status"] == "completed"


def run_steps(catalog: str, run_dir: Path) -> int | None:
    """The steps the run of ``run_dir`` registered (None: no row)."""
    row = _run_row(Catalog(catalog), run_dir.name)
    return None if row is None or row["steps"] is None else int(row["steps"])


def benchmarks_to_evaluate(catalog: str, run_dir: Path, benchmarks: list[str]) -> list[str]:
    """Those of ``benchmarks`` with no evaluation row for the run of ``run_dir`` yet."""
    from data_catalog.evaluations import read_evaluations

    cat = Catalog(catalog)
    if not cat.exists("evaluations"):
        return list(benchmarks)
    rows = read_evaluations(cat)
    done = set(rows.filter(pc.equal(rows.column("run_id"), run_dir.name)).column("benchmark").to_pylist())
    return [b for b in benchmarks if b not in done]


def _same_model(row: dict[str, Any], model: dict[str, Any]) -> bool:
    theirs = dict(json.loads(row["config_json"] or "{}").get("model") or {})
    theirs.pop("init_backbone", None)
    return theirs == {k: v for k, v in model.items() if k != "init_backbone"}


def last_backbone(catalog: str, stage: PretrainStageConfig, run_dir: Path) -> str | None:
    """The exported teacher of the newest completed run (not ``run_dir``'s) whose model settings
    match ``stage``'s and whose file exists; None when there is none."""
    cat = Catalog(catalog)
    if not cat.exists("runs"):
        return None
    from data_catalog.runs import read_runs

    model = stage.train.model.model_dump(mode="json")
    rows = [
        r
        for r in read_runs(cat).to_pylist()
        if r["status"] == "completed" and r["run_id"] != run_dir.name and r["backbone_uri"]
    ]
    rows.sort(key=lambda r: (r["finished_at"] or r["started_at"], r["run_id"]), reverse=True)
    for row in rows:
        if _same_model(row, model) and Path(row["backbone_uri"]).is_file():
            return str(row["backbone_uri"])
    return None


def starting_point(catalog: str, stage: PretrainStageConfig, run_dir: Path) -> PretrainStageConfig:
    """``stage`` with ``model.init_backbone`` set to :func:`last_backbone` under ``continue_from:
    last`` (a ``model.init_backbone`` of the user's wins; none found: a fresh start)."""
    if stage.continue_from != "last" or stage.train.model.init_backbone is not None:
        return stage
    start = last_backbone(catalog, stage, run_dir)
    if start is None:
        return stage
    model = stage.train.model.model_copy(update={"init_backbone": start})
    return stage.model_copy(update={"train": stage.train.model_copy(update={"model": model})})
