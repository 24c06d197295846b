"""The semantic curation sub-flows of ``curate``: embed, semantic dedup, evaluation-leak removal.

Each is a Prefect sub-flow that wraps one library call (``curation.embed``, ``curation.neardup``,
``curation.leaks``) and publishes what it did: a counts table (images per status and reason after
the stage) and a markdown report with its PNGs embedded as data URIs (also saved under
``CATALOG/runs/<run_id>/``). Stages pass references: model ids (the vectors are in the
``embeddings`` table), table versions.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger

from data_catalog.catalog import Catalog
from data_catalog.images import status_counts
from flows.artifacts import StageProgress, png_markdown, publish_counts, publish_markdown, table_markdown
from flows.config import PipelineConfig

ROLES = ("semantic", "copy")


def needed_roles(config: PipelineConfig) -> list[str]:
    """The embedders the enabled stages need (see ``flows.cli_curate.uses_vectors``)."""
    from flows.cli_curate import uses_vectors

    return [role for role, needed in uses_vectors(config).items() if needed]


def checkpoint_for(config: PipelineConfig, role: str) -> str:
    """The configured checkpoint of ``role``, else its default (``curation.embed.configured_checkpoint``)."""
    from curation.embed import configured_checkpoint

    return configured_checkpoint(Catalog(config.catalog), config.curate.embed, role, config.dataset.name)


def save_png(catalog: Catalog, run_id: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``CATALOG/runs/<run_id>/<name>.png`` (one PUT / write); returns its uri."""
    uri = catalog.uri("runs", run_id, f"{name}.png")
    fs = catalog.filesystem()
    fs.makedirs(posixpath.dirname(uri), exist_ok=True)
    fs.pipe(uri, data)
    return uri


def _embed_dask(config: PipelineConfig) -> str | None:
    """A Dask cluster the user named runs the embedding partitions; otherwise this process embeds
    (one process per GPU where several are visible): a LocalCluster would only split 2 cores."""
    address = config.dask_address
    return address if address not in (None, "sync") else None


def embed_progress(role: str, model_id: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` for the embed stage: the Prefect progress artifact (updated when the
    whole percentage changes: at most 100 API calls at any scale), and a log line (console and UI) at
    every further tenth of the images."""
    progress = StageProgress(f"embed-{role}-progress", f"{role} vectors ({model_id})", "images")
    logger, tenth_shown = get_run_logger(), [0]

    def on_progress(done: int, total: int) -> None:
        progress(done, total)  # the artifact at most 100 times, a bar on a terminal
        percent = 100 * done // total if total else 100
        if percent // 10 > tenth_shown[0]:
            tenth_shown[0] = percent // 10
            logger.info("embedding %s vectors: %d / %d images (%d%%)", role, done, total, percent)

    return on_progress


@flow(name="embed")
def embed_stage(config: PipelineConfig, run_id: str) -> dict[str, Any]:
    """Vectors for every accepted or duplicate image without one, per embedder the enabled stages
    need; returns ``{role: {"checkpoint", "model_id", "embedded", "already", "failed", ...}}``."""
    from curation.embed import embed_catalog, load_embedder

    logger = get_run_logger()
    catalog = Catalog(config.catalog)
    out: dict[str, Any] = {}
    for role in needed_roles(config):
        path = checkpoint_for(config, role)
        descriptor = load_embedder(path, role)
        on_progress = embed_progress(role, descriptor.model_id)
        result = embed_catalog(
            catalog, descriptor, config.curate.embed, run_id, on_progress, _embed_dask(config)
        )
        on_progress(1, 1)
        failed = result.get("failed", [])
        logger.info(
            "%s embedder %s (%s): %d embedded, %d already had a vector, %d failed",
            role, descriptor.model_id, path, result["embedded"], result["already"], len(failed),
        )  # fmt: skip
        for item in failed[:20]:
            logger.warning("could not embed %s: %s", item.get("uri"), item.get("error"))
        out[role] = {"checkpoint": str(path), "kind": descriptor.kind, "dim": descriptor.dim, **result}
    rows = [
        {"role": role, "model_id": r["model_id"], "checkpoint": r["checkpoint"], "embedded": r["embedded"],
         "already": r["already"], "failed": len(r.get("failed", []))}
        for role, r in out.items()
    ]  # fmt: skip
    publish_markdown(
        "embed", "# Embed\n\nWhich model embedded what (this run).\n\n" + table_markdown(rows), "embed stage"
    )
    return out


def _pairs_markdown(
    catalog: Catalog, run_id: str, name: str, pairs: list[tuple[str, str, str]], title: str
) -> str:
    """A grid of found pairs for a human to check (``curation.plots.pair_grid``), as markdown."""
    if not pairs:
        return f"## {title}\n\nnone found\n"
    from curation.plots import pair_grid

    data = pair_grid(catalog, pairs)
    return f"## {title}\n\n" + png_markdown(data, title, save_png(catalog, run_id, name, data))


@flow(name="semantic-dedup")
def semantic_dedup_stage(config: PipelineConfig, run_id: str, copy_model_id: str) -> dict[str, Any]:
    """Near-duplicates by copy vectors over the whole catalog (``curation.neardup``)."""
    from curation.neardup import apply_semantic_dedup

    catalog = Catalog(config.catalog)
    result = apply_semantic_dedup(catalog, copy_model_id, config.curate.semdedup, run_id)
    cfg = config.curate.semdedup
    verified = (
        f", verified geometrically under {cfg.verify_below}: {result.get('geometric_checked')} pairs checked, "
        f"{result.get('geometric_vetoed')} vetoed"
        if cfg.verify == "geometric"
        else ""
    )
    get_run_logger().info(
        "semantic dedup (%s, cosine >= %s%s): %s near duplicates, %s rows changed",
        copy_model_id, result.get("verify_from", cfg.threshold), verified,
        result.get("near_duplicate_embedding"), result.get("changed"),
    )  # fmt: skip
    publish_counts("semantic-dedup", status_counts(catalog), "after near-duplicate removal by copy vectors")
    pairs = [(p["uri"], p["dup_of_uri"], f"cos {p['cosine']:.3f}") for p in result.get("pairs", [])]
    summary = {k: v for k, v in result.items() if k != "pairs"}
    publish_markdown(
        "semantic-dedup",
        "# Semantic dedup\n\n" + table_markdown([summary])
        + _pairs_markdown(catalog, run_id, "semantic-dedup-pairs", pairs, "Duplicate pairs (copy, kept)"),
        "semantic dedup: counts and found pairs",
    )  # fmt: skip
    return summary


@flow(name="leak-removal")
def leak_stage(config: PipelineConfig, run_id: str, copy_checkpoint: str) -> dict[str, Any]:
    """Pool images that are copies of an ``--eval-set`` image become ``rejected`` / ``eval_leak``."""
    from curation.embed import load_embedder
    from curation.leaks import apply_leak_removal

    catalog, cur = Catalog(config.catalog), config.curate
    descriptor = load_embedder(copy_checkpoint, "copy")
    result = apply_leak_removal(
        catalog, descriptor, dict(cur.leaks.eval_sets), cur.leaks, run_id, cur.embed, mirror=cur.leaks.mirror
    )
    verified = (
        f", candidates from cosine {result.get('verify_from')} verified geometrically under "
        f"{cur.leaks.verify_below}: {result.get('geometric_checked')} pairs checked, "
        f"{result.get('geometric_vetoed')} vetoed"
        if cur.leaks.verify == "geometric"
        else f", cosine >= {cur.leaks.threshold}"
    )
    get_run_logger().info(
        "leak removal against %s%s: %s", sorted(cur.leaks.eval_sets), verified, result.get("benchmarks")
    )
    publish_counts("leak-removal", status_counts(catalog), "after evaluation-leak removal")
    pairs = [(p["uri"], p["eval_uri"], str(p["detail"])) for p in result.get("examples", [])]
    summary = {k: v for k, v in result.items() if k not in ("examples", "benchmarks")}
    per_benchmark = [{"benchmark": k, **v} for k, v in result.get("benchmarks", {}).items()]
    publish_markdown(
        "leak-removal",
        "# Evaluation leaks\n\n" + table_markdown(per_benchmark) + "\n" + table_markdown([summary])
        + _pairs_markdown(catalog, run_id, "leak-pairs", pairs, "Leaks (pool image, eval image)"),
        "leak removal: counts per benchmark and found leaks",
    )  # fmt: skip
    return summary
