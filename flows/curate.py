"""The ``curate`` flow: ingest -> filter -> embed -> hash dedup -> semantic dedup -> leak removal ->
cluster -> sample -> dataset version. Ingest runs one Prefect task per partition on Dask; the
semantic stages are sub-flows (``flows/semantic.py``, ``flows/clustering.py``), each switched by its
``enabled`` (leak removal by having ``--eval-set``s). Embedding runs before hash dedup, so the copy
vectors can confirm pHash links between small images (it embeds accepted and duplicate images
alike, and each image id once, so the order costs nothing). Without vectors (embedding off, or no
stage needing them) the dataset version is a uniform sample of the accepted images, as before."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State

from curation import hashdedup, ingest, parallel
from data_catalog.catalog import Catalog
from data_catalog.images import status_counts
from data_catalog.settings import ConfigError
from flows.artifacts import StageProgress, publish_counts, publish_markdown
from flows.clustering import check_selection, cluster_stage
from flows.config import PipelineConfig
from flows.dataset import dataset_version
from flows.nights import adopt_staging, unchanged_since
from flows.retries import io_task
from flows.retrieval import check_seed_set, retrieval_stage
from flows.semantic import embed_stage, leak_stage, needed_roles, semantic_dedup_stage
from flows.settings import save_pipeline_config


@io_task("plan-partitions")
def plan_partitions(config: PipelineConfig) -> list[list[str]]:
    """List the source and drop uris the catalog already holds (no bytes read): the partitions."""
    if config.source is None:
        return []
    return ingest.plan_partitions(Catalog(config.catalog), config.source, config.curate)


@io_task("ingest-partition", tags=["ingest"])
def ingest_partition(
    index: int, uris: list[str], config: PipelineConfig, run_id: str, dask_address: str
) -> str:
    """Decode, hash and filter one partition on the Dask cluster; returns its staging parquet."""
    assert config.source is not None, "partitions exist only for a source"
    args = (Catalog(config.catalog), index, uris, config.source, config.curate, run_id)
    return str(parallel.run_one(dask_address, ingest.stage_partition, *args))


@io_task("commit-ingest")
def commit_ingest(catalog: str, staging: list[str], run_id: str) -> int:
    """All partitions' rows in one atomic Delta commit of the images table."""
    return ingest.commit_ingest(Catalog(catalog), staging, run_id)


@io_task("hash-dedup")
def hash_dedup(config: PipelineConfig, run_id: str, copy_model_id: str | None = None) -> dict[str, Any]:
    """Exact and pHash groups over the whole catalog. With ``curate.semdedup.confirm_phash``, a pHash
    link between different files stands when the smaller image is >= 64 px, or when their copy
    vectors agree (cosine >= ``confirm_threshold``, else ``threshold``); without vectors only at
    distance 0 (``curation.neardup.phash_confirmer``, measured in docs/semantic-dedup.md)."""
    catalog, cur = Catalog(config.catalog), config.curate
    confirm = None
    if cur.semdedup.confirm_phash:
        from curation.neardup import phash_confirmer

        min_cosine = cur.semdedup.confirm_threshold or cur.semdedup.threshold
        confirm = phash_confirmer(catalog, copy_model_id, min_cosine, cur.dedup.phash_radius)
    return hashdedup.apply_hash_dedup(catalog, cur.dedup, run_id, confirm=confirm)


def _run_id() -> str:
    run = flow_run.get_id()
    return f"curate-{run}" if run else "curate-local"


def ingest_new(config: PipelineConfig, run_id: str, plans: list[list[str]]) -> int:
    """Stage and commit the planned new files of ``config.source``; returns the partition count.
    Partitions a killed run staged are reused (``flows.nights.adopt_staging``), not decoded again."""
    logger = get_run_logger()
    logger.info("%d new files in %d partitions from %s", sum(map(len, plans)), len(plans), config.source)
    staging: list[str] = []
    if plans:
        adopted = adopt_staging(config, plans, run_id)
        if adopted:
            logger.info("%d of %d partitions were staged by a killed run: reused", adopted, len(plans))
        progress = StageProgress("ingest-progress", "ingest", "partitions")
        ing = config.curate.ingest
        with parallel.dask_session(config.dask_address, ing.n_workers, ing.threads_per_worker) as address:
            futures = [ingest_partition.submit(i, p, config, run_id, address) for i, p in enumerate(plans)]
            for done, future in enumerate(as_completed(futures), start=1):
                staging.append(future.result())
                progress(done, len(plans))
    version = commit_ingest(config.catalog, sorted(staging), run_id)
    counts = status_counts(Catalog(config.catalog))
    publish_counts("ingest", counts, f"after ingest and quality filters (images v{version})")
    return len(plans)


def semantic_stages(config: PipelineConfig, run_id: str, embedded: dict[str, Any]) -> dict[str, Any]:
    """Semantic dedup, leak removal and clustering, each when enabled and its vectors exist."""
    cur, out = config.curate, {}
    copy, semantic = embedded.get("copy"), embedded.get("semantic")
    if copy is not None and cur.semdedup.enabled:
        out["semdedup"] = semantic_dedup_stage(config, run_id, copy["model_id"])
    if copy is not None and cur.leaks.eval_sets:
        out["leaks"] = leak_stage(config, run_id, copy["checkpoint"])
    if semantic is not None and cur.cluster.enabled and cur.sample.mode != "retrieval":
        check_selection(config, Catalog(config.catalog), semantic["model_id"])
        out["cluster"] = cluster_stage(config, run_id, semantic["model_id"])
    if semantic is not None and cur.sample.mode == "retrieval":
        check_seed_set(config, Catalog(config.catalog))
        out["retrieval"] = retrieval_stage(config, run_id, semantic)
    return out


def _geometric(cfg: Any, verify_from: float | None) -> dict[str, Any] | None:
    """What a dataset version records of a stage's geometric verification (None when off)."""
    from curation.geometric import VERIFIER_ID

    if cfg.verify != "geometric":
        return None
    out = {"verifier": VERIFIER_ID, "verify_below": cfg.verify_below, "min_inliers": cfg.min_inliers,
           "min_spread": cfg.min_spread, "verify_min_side": cfg.verify_min_side}  # fmt: skip
    if verify_from is not None:
        out["verify_from"] = min(verify_from, cfg.threshold)
    return out


def selection_record(
    config: PipelineConfig, embedded: dict[str, Any], stages: dict[str, Any]
) -> dict[str, Any]:
    """What chose the dataset version's images: the rule, the embedders' ids and the thresholds."""
    cur = config.curate
    cluster, retrieval = stages.get("cluster"), stages.get("retrieval")
    rule: dict[str, Any] = {"rule": "uniform", "max_samples": config.dataset.max_samples}
    if retrieval is not None:
        rule = {
            "rule": "retrieval",
            **{k: retrieval[k] for k in ("seed_set", "seeds", "k", "min_similarity")},
        }
        rule.update(pool=retrieval["pool"], selected=retrieval["selected"])
    if cluster is not None:
        keys = ("mode", "strategy", "target_size", "seed", "pool", "selected", "clustering_id", "n_clusters")
        name = "all" if cluster["mode"] == "all" else "balanced_hierarchical"
        rule = {"rule": name, **{k: cluster[k] for k in keys}}
        rule["cluster"] = cur.cluster.model_dump(mode="json")
    thresholds: dict[str, Any] = {"phash_radius": cur.dedup.phash_radius if cur.dedup.enabled else None}
    if "semdedup" in stages:
        thresholds["near_duplicate_cosine"] = cur.semdedup.threshold
        thresholds["phash_confirm_cosine"] = (
            (cur.semdedup.confirm_threshold or cur.semdedup.threshold) if cur.semdedup.confirm_phash else None
        )
        thresholds["near_duplicate_geometric"] = _geometric(cur.semdedup, cur.semdedup.verify_from)
    if "leaks" in stages:
        thresholds["eval_leak_cosine"] = cur.leaks.threshold
        thresholds["eval_leak_geometric"] = _geometric(cur.leaks, cur.leaks.verify_from)
        rule["eval_sets"] = dict(cur.leaks.eval_sets)
    embedders = {
        role: {"model_id": r["model_id"], "checkpoint": r["checkpoint"]} for role, r in embedded.items()
    }
    return {**rule, "embedders": embedders, "thresholds": thresholds}


def nothing_new(config: PipelineConfig, since: str) -> dict[str, Any]:
    """The result of a night without new images: said in the log and in an artifact."""
    catalog = Catalog(config.catalog)
    message = f"no new images since {since}: curation skipped, {since} stays the newest dataset version"
    get_run_logger().info(message)
    publish_markdown(
        "curate-nothing-new", f"# Nothing new\n\n{message} (source `{config.source}`).\n", message
    )
    return {"catalog": catalog.root, "new_partitions": 0, "unchanged_since": since, "dataset": since,
            "images_version": catalog.version("images"), "counts": status_counts(catalog)}  # fmt: skip


def failed(exc: ConfigError) -> State:
    """The run's end for a user's mistake found mid-run (a target above the pool): returned as the
    flow's state, so Prefect logs one line instead of a traceback and the caller gets ``exc``."""
    return Failed(message=str(exc), data=exc)


@flow(name="curate", log_prints=True)
def curate(config: PipelineConfig) -> dict[str, Any]:
    """Bring new images of ``config.source`` into the catalog, curate the pool and (when
    ``dataset.enabled``) write a dataset version; returns counts, table versions and the dataset ref."""
    logger = get_run_logger()
    catalog, cur = Catalog(config.catalog), config.curate
    run_id = _run_id()  # a retried flow run keeps its id, so staged partitions are reused
    logger.info("resolved config: %s", save_pipeline_config(config, run_id))
    plans = plan_partitions(config)
    since = None if plans else unchanged_since(config)
    if since is not None:  # a night with nothing new: no embedding, dedup, clustering or new version
        return nothing_new(config, since)
    new_partitions = ingest_new(config, run_id, plans)
    embedded = embed_stage(config, run_id) if cur.embed.enabled and needed_roles(config) else {}
    copy_id = embedded["copy"]["model_id"] if "copy" in embedded else None
    dedup = hash_dedup(config, run_id, copy_id) if cur.dedup.enabled else {}
    publish_counts("hash-dedup", status_counts(catalog), "after exact and perceptual duplicate removal")
    try:
        stages = semantic_stages(config, run_id, embedded)
    except ConfigError as exc:
        return failed(exc)  # type: ignore[return-value]  # the caller gets exc raised
    result: dict[str, Any] = {"catalog": catalog.root, "new_partitions": new_partitions, "dedup": dedup,
                              "embed": embedded, **stages}  # fmt: skip
    if config.dataset.enabled:
        chosen = stages.get("cluster") or stages.get("retrieval")
        selection = chosen["selection"] if chosen else None
        record = selection_record(config, embedded, stages)
        result["dataset"] = dataset_version(config.catalog, config.dataset, selection, record)
    result["images_version"] = catalog.version("images")
    result["counts"] = status_counts(catalog)
    return result
