"""``curate-and-pretrain``: the whole DAG, as a story of a few lines (logic lives in the libraries).

Each night curates what is new, then pretrains and evaluates what is not done yet: a night with no
new images (``flows.nights``) keeps the newest dataset version, skips a run already completed on it
and an evaluation already recorded, and resumes a run killed mid-training from its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from data_catalog.settings import ConfigError
from flows.config import PipelineConfig
from flows.curate import curate, failed
from flows.evaluate import check_run_benchmarks, evaluate_run
from flows.nights import benchmarks_to_evaluate, run_completed, starting_point
from flows.pretrain_stage import pretrain, run_dir_for
from flows.run_report import report_task


def completed_with_other_settings(config: PipelineConfig, run_dir: Path) -> str | None:
    """One line when the completed run of ``run_dir`` was trained with other settings than the config's
    (more ``max_steps`` than it ran, another learning rate, ...), else None."""
    from data_catalog.settings import read_yaml
    from flows.nights import run_steps
    from pretrain.config import config_differences

    diffs = []
    steps, wanted = run_steps(config.catalog, run_dir), config.pretrain.max_steps
    if wanted is not None and steps is not None and steps < wanted:
        diffs.append(f"max_steps: {steps} -> {wanted}")
    saved = run_dir / "config.yaml"
    if saved.is_file():
        diffs += config_differences(
            read_yaml(saved), starting_point(config.catalog, config.pretrain, run_dir).train
        )
    if not diffs:
        return None
    return (
        f"run {run_dir.name} completed with other settings than the config's ({'; '.join(diffs)}): pretraining "
        "skipped, the completed run stands; to train with the new settings, give the run another "
        "pretrain.output_root (or pretrain.preset)"
    )


def pretrain_and_evaluate(config: PipelineConfig, dataset: str) -> dict[str, Any]:
    """Pretrain on ``dataset`` unless its run completed (a new run starts per ``continue_from``, a
    killed one resumes), then evaluate on the benchmarks the run has no evaluation for yet."""
    logger, out = get_run_logger(), dict[str, Any]()
    run_dir = run_dir_for(config.catalog, dataset, config.pretrain)
    if run_completed(config.catalog, run_dir):
        logger.info("run %s on %s is already completed: pretraining skipped", run_dir.name, dataset)
        out["run_dir"] = str(run_dir)
        changed = completed_with_other_settings(config, run_dir)
        if changed is not None:  # never silently: the settings the user changed did not train anything
            logger.warning(changed)
            out["pretrain_skipped"] = changed
    else:
        stage = starting_point(config.catalog, config.pretrain, run_dir)
        start = stage.train.model.init_backbone
        logger.info("run %s starts from %s", run_dir.name, start or "random weights (or its checkpoints)")
        out.update(pretrain(config.catalog, dataset, stage))
    if config.evaluate.enabled:
        todo = benchmarks_to_evaluate(config.catalog, run_dir, config.evaluate.run_benchmarks)
        if todo != config.evaluate.run_benchmarks:
            logger.info("run %s: evaluations recorded; to do: %s", run_dir.name, ", ".join(todo) or "none")
        if todo:
            stage_cfg = config.evaluate.model_copy(update={"run_benchmarks": todo})
            out["evaluations"] = evaluate_run(config.catalog, out["run_dir"], stage_cfg)
    return out


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
    if result.get("dataset") is not None and config.pretrain.enabled:
        result.update(pretrain_and_evaluate(config, result["dataset"]))
    result["report"] = report_task(config.catalog, config.source, result)  # flows/run_report.py
    return result
