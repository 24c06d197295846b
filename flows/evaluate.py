"""The ``evaluate`` flow: a checkpoint and its baselines on a benchmark, reports, the catalog row.

    load-benchmark -> load-subjects -> evaluate-<subject> x N -> write-reports -> record-evaluation

The logic lives in ``evaluation/`` (plain functions); each task wraps one call. Results: a metrics
JSON, PNGs and ``report.md`` in the report folder, a Prefect table artifact of every number (with
its change against the previous evaluation of the benchmark when a catalog is given) and a markdown
artifact with the pictures embedded as data URIs.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from data_catalog.catalog import Catalog
from data_catalog.evaluations import record_evaluation
from data_catalog.settings import ConfigError
from evaluation.checkpoints import Subject, resolve_checkpoint
from evaluation.config import BenchmarkConfig, EvalConfig
from evaluation.datasets import Benchmark, load_benchmark
from evaluation.evaluate import (
    EvaluationResult,
    SubjectOutcome,
    build_subjects,
    catalog_rows,
    copy_detection_metrics,
    evaluate_subject,
    metrics_document,
    resolve_device,
)
from evaluation.reports import write_reports
from evaluation.summary import change_rows, markdown_report, metric_rows
from flows.artifacts import artifact_key, image_markdown, publish_markdown


@task(name="load-benchmark", cache_policy=NO_CACHE)
def load_benchmark_task(name: str, bench_cfg: BenchmarkConfig, config: EvalConfig) -> Benchmark:
    bench = load_benchmark(name, bench_cfg, config.cache_root())
    logger = get_run_logger()
    for warning in bench.warnings:
        logger.warning("benchmark %s: %s", name, warning)
    logger.info("%s: %d train, %d test images", name, len(bench.train.files), len(bench.test.files))
    return bench


@task(name="load-subjects", cache_policy=NO_CACHE)
def load_subjects(checkpoint: str, config: EvalConfig, start_checkpoint: str | None) -> list[Subject]:
    """The checkpoint, strictly loaded (a mismatch stops the flow here), and the baselines."""
    return build_subjects(checkpoint, config, start_checkpoint)


@task(name="evaluate-subject", cache_policy=NO_CACHE)
def evaluate_subject_task(
    subject: Subject, bench: Benchmark, config: EvalConfig, device: str
) -> SubjectOutcome:
    outcome = evaluate_subject(subject, bench, config, device)
    skipped = len(outcome.train.skipped) + len(outcome.test.skipped)
    get_run_logger().info(
        "%s: %s (features from cache: %d of 2 splits; %d images skipped)",
        subject.name, json.dumps(outcome.result.metrics, default=str)[:400], outcome.cache_hits, skipped,
    )  # fmt: skip
    return outcome


@task(name="evaluate-copy-detection", cache_policy=NO_CACHE)
def copy_detection_task(subjects: list[Subject], config: EvalConfig, device: str) -> dict[str, Any]:
    """Planted copies of real photos: DISC21 μAP of every subject and of the copy descriptor."""
    copy = copy_detection_metrics(subjects, config, device)
    if "skipped" in copy:
        get_run_logger().warning("copy detection skipped: %s", copy["skipped"])
    return copy


@task(name="write-reports", cache_policy=NO_CACHE)
def write_reports_task(
    result: EvaluationResult, bench: Benchmark, out_dir: Path, config: EvalConfig
) -> dict[str, str]:
    return {name: str(path) for name, path in write_reports(result, bench, out_dir, config).items()}


@task(name="record-evaluation", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_task(catalog: str, rows: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """One commit of the ``evaluations`` table; returns the rows with their change and drop flag."""
    return record_evaluation(Catalog(catalog), rows, tolerance)[1]


def _eval_id() -> str:
    run = flow_run.get_id()
    return f"eval-{run}" if run else f"eval-{uuid.uuid4()}"


def default_out_dir(catalog: str | None, eval_id: str) -> Path:
    """``CATALOG/runs/<eval_id>`` (local catalogs), else ``./dinoflow-eval/<eval_id>``."""
    if catalog is not None and Catalog(catalog).is_local:
        return Path(Catalog(catalog).uri("runs", eval_id))
    return Path("dinoflow-eval") / eval_id


def publish(
    doc: dict[str, Any], images: dict[str, str], written: list[dict[str, Any]] | None, out: Path
) -> None:
    """The table artifact, the markdown artifact (PNGs as data URIs) and ``report.md`` (links)."""
    name = f"{doc['benchmark']['name']}-{doc['checkpoint'].get('model_id', 'model')}"
    rows = change_rows(written) if written else metric_rows(doc)
    create_table_artifact(table=rows, key=artifact_key(f"eval-{name}"), description=f"evaluation {name} (%)")
    md = markdown_report(doc, images, lambda p, alt: image_markdown(Path(p), alt), written)
    publish_markdown(f"eval-{name}-report", md, f"evaluation {name}")
    rel = markdown_report(doc, images, lambda p, alt: f"![{alt}]({Path(p).name})\n", written)
    (out / "report.md").write_text(rel)


@flow(name="evaluate", log_prints=True)
def evaluate(
    checkpoint: str,
    benchmark: str,
    config: EvalConfig | None = None,
    catalog: str | None = None,
    run_id: str | None = None,
    out_dir: str | None = None,
    benchmark_config: BenchmarkConfig | None = None,
    start_checkpoint: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a path, or a run id of ``catalog``) on ``benchmark`` (a name of
    ``config``'s registry, or ``benchmark_config`` for an ad-hoc set); returns the metrics document
    with ``eval_id``, ``report_dir`` and ``drops`` added."""
    config = config or EvalConfig()
    path, found_run = resolve_checkpoint(checkpoint, catalog)
    bench = load_benchmark_task(benchmark, benchmark_config or config.benchmark(benchmark), config)
    subjects = load_subjects(path, config, start_checkpoint)
    device = resolve_device(config.device)
    outcomes = {s.name: evaluate_subject_task.with_options(name=f"evaluate-{s.name}")(s, bench, config, device)
                for s in subjects}  # fmt: skip
    copy = copy_detection_task(subjects, config, device)
    doc = metrics_document(bench, outcomes, config, copy)
    eval_id = _eval_id()
    out = Path(out_dir) if out_dir else default_out_dir(catalog, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    images = (
        write_reports_task(EvaluationResult(doc, outcomes), bench, out, config)
        if config.report.enabled
        else {}
    )
    written = None
    if catalog is not None:
        written = record_task(catalog, catalog_rows(doc, eval_id, run_id or found_run), config.drop_tolerance)
    drops = [
        f"{r['protocol']} {r['metric']}"
        for r in written or []
        if r["dropped"] and r["subject"] == "checkpoint"
    ]
    if drops:
        get_run_logger().warning("dropped against the previous evaluation: %s", ", ".join(drops))
    doc.update(eval_id=eval_id, report_dir=str(out), drops=drops, run_id=run_id or found_run)
    (out / "metrics.json").write_text(json.dumps(doc, indent=2))
    publish(doc, images, written, out)
    return doc


def run_start_checkpoint(run_dir: str) -> str | None:
    """The backbone a training run started from (``model.init_backbone`` of its ``config.yaml``), if any
    and still present: the evaluation's ``start_checkpoint`` baseline."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    start = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("init_backbone")
    return str(start) if start and Path(start).exists() else None


def evaluate_run(catalog: str, run_dir: str, config: EvalConfig) -> list[dict[str, Any]]:
    """The end of ``curate-and-pretrain``: the run's exported teacher on each of
    ``config.run_benchmarks`` (one ``evaluate`` sub-flow each), recorded under the run's id, with the
    backbone the run started from (``model.init_backbone``) as the start-checkpoint baseline."""
    teacher = Path(run_dir) / "teacher_backbone.safetensors"
    start = run_start_checkpoint(run_dir)
    out = []
    for name in config.run_benchmarks:
        doc = evaluate(
            str(teacher), name, config, catalog=catalog, run_id=Path(run_dir).name, start_checkpoint=start
        )
        out.append({k: doc[k] for k in ("eval_id", "report_dir", "summary", "drops")} | {"benchmark": name})
    return out


def check_run_benchmarks(config: EvalConfig) -> None:
    """Before a pipeline run: each of ``run_benchmarks`` is known and its images exist (a
    ConfigError naming the first that is not), so a typo does not surface after pretraining."""
    from evaluation.config import expand_path

    for name in config.run_benchmarks:
        bench = config.benchmark(name)
        for spec in (bench.train, bench.test):
            if spec is not None and not os.path.exists(expand_path(spec)):
                raise ConfigError(
                    f"evaluate.run_benchmarks: benchmark {name!r} needs {expand_path(spec)}, not found"
                )
