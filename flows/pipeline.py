"""``curate-and-pretrain``: the whole DAG, as a story of a few lines (logic lives in the libraries)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from data_catalog.settings import ConfigError
from flows.config import PipelineConfig
from flows.curate import curate, failed
from flows.evaluate import check_run_benchmarks, evaluate_run
from flows.pretrain_stage import pretrain
from flows.run_report import report_task


@flow(name="curate-and-pretrain", log_prints=True)
def curate_and_pretrain(config: PipelineConfig) -> dict[str, Any]:
    """Curate (ingest -> filter -> embed -> dedup -> leaks -> cluster -> sample -> dataset version)
    -> pretrain -> evaluate (stages toggled in the config)."""
    if config.pretrain.enabled and config.evaluate.enabled:
        check_run_benchmarks(config.evaluate)  # before hours of work, not after
    try:
        result: dict[str, Any] = curate(config)
    except ConfigError as exc:  # a target above the pool: one line, not a traceback
        return failed(exc)  # type: ignore[return-value]  # the caller gets exc raised
    if result.get("dataset") is not None:
        if config.pretrain.enabled:
            result.update(pretrain(config.catalog, result["dataset"], config.pretrain))
            if config.evaluate.enabled:
                result["evaluations"] = evaluate_run(config.catalog, result["run_dir"], config.evaluate)
    result["report"] = report_task(config.catalog, config.source, result)  # flows/run_report.py
    return result
