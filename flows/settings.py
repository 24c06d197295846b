"""The pipeline's config from the CLI: YAML file, flags, ``--set`` overrides; saved beside each run.

The loader itself is ``data_catalog.settings`` (one for every layer); this module adds what is
about the pipeline: flags that override the file (``--catalog``, ``--source``), and where a run's
resolved config is saved (``CATALOG/runs/<run_id>/pipeline.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from data_catalog.catalog import Catalog
from data_catalog.settings import (
    ConfigError,
    apply_overrides,
    deep_merge,
    dump_yaml,
    read_yaml,
    to_yaml,
    validate,
)
from flows.config import PipelineConfig

PIPELINE_FILE = "pipeline.yaml"


def pipeline_config(
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    require_source: bool = False,
    **flags: Any,
) -> PipelineConfig:
    """The file's keys, then the flags that were given (``catalog=``, ``source=``, ... not None), then
    ``--set`` overrides; validated once. A missing catalog (or source) is a one-line ConfigError."""
    tree = read_yaml(file) if file is not None else {}
    tree = deep_merge(tree, {k: v for k, v in flags.items() if v is not None})
    tree = apply_overrides(PipelineConfig, tree, list(overrides or []))
    # unknown keys and bad values first: a misspelled 'sorce:' is named as such, not as a missing source
    no_catalog = tree.get("catalog") is None
    cfg = validate(
        PipelineConfig, {**tree, "catalog": ""} if no_catalog else tree, f"config {file}" if file else None
    )
    in_file = "" if file is None else f" or set it in {file}"
    if no_catalog:
        raise ConfigError(f"no catalog: pass --catalog (a folder or an fsspec URI){in_file}")
    if require_source and cfg.source is None:
        raise ConfigError(
            f"no source: pass --source (a folder, fsspec URL, tar shards or a URI list){in_file}"
        )
    return cfg


def save_pipeline_config(config: PipelineConfig, run_id: str) -> str:
    """Write the resolved config to ``CATALOG/runs/<run_id>/pipeline.yaml`` (atomic); returns its uri.

    It loads back (``--config``) to an equal config; credentials never are in it (they come from
    the environment).
    """
    catalog = Catalog(config.catalog)
    if catalog.is_local:
        return str(dump_yaml(config, Path(catalog.uri("runs", run_id, PIPELINE_FILE))))
    uri = catalog.uri("runs", run_id, PIPELINE_FILE)
    catalog.filesystem().pipe(uri, to_yaml(config).encode())  # one object PUT: atomic on object stores
    return uri


def curation_record(catalog: Catalog) -> dict[str, Any] | None:
    """The curation settings behind the images table as it is now, for a dataset version to record.

    The newest images commit names its run (``run_id`` in the Delta commit metadata); that run's
    saved ``pipeline.yaml`` holds the curate config (filters, hash radius, ...) that decided the
    statuses: hash dedup regroups the whole catalog on every run, so the newest run's settings are
    the ones in force. None when the table has no commit; ``curate: None`` when the run saved no
    config (a library call such as the bootstrap build).
    """
    history = catalog.history("images")
    if not history:
        return None
    newest = max(history, key=lambda h: h["version"])
    run_id = newest.get("run_id")
    record: dict[str, Any] = {"images_table_version": newest["version"], "run_id": run_id, "curate": None}
    if run_id:
        uri = catalog.uri("runs", str(run_id), PIPELINE_FILE)
        fs = catalog.filesystem()
        if fs.exists(uri):
            saved = yaml.safe_load(fs.cat_file(uri).decode()) or {}
            record["curate"] = saved.get("curate")
            record["pipeline_config"] = uri
    return record
