"""The ``dinoflow`` command line. Heavy imports (prefect, torch) happen inside the commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_dataset import dataset_app
from flows.cli_evaluate import evaluate_command
from flows.cli_model import model_app

app = typer.Typer(
    help="dinoflow: curate a pile of images and pretrain DINOv2 on it, as one Prefect DAG.",
    no_args_is_help=True,
    add_completion=False,
)
catalog_app = typer.Typer(help="Inspect and export a data catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@app.callback()
def global_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Also show Dask's own INFO logs (scheduler, nannies, workers).")
    ] = False,
) -> None:
    """The console tells the pipeline's story: Dask's logs at WARNING unless --verbose."""
    from curation.parallel import set_dask_log_level

    set_dask_log_level("info" if verbose else "warning")


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with pipeline settings.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override one setting, e.g. --set curate.filter.min_side=96 or "
        "--set pretrain.train.optim.base_lr=1e-3 (repeatable).",
    ),
]
CatalogOpt = Annotated[str, typer.Option("--catalog", help="Catalog root: a folder or an fsspec URI.")]


CatalogFlag = Annotated[
    str | None,
    typer.Option(
        "--catalog", help="Catalog root: a folder or an fsspec URI (overrides 'catalog:' of --config)."
    ),
]
EmbedCheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--embed-checkpoint",
        help="Semantic backbone for clustering and retrieval (dinoflow, official DINOv2 .pth, Hugging "
        "Face directory; local path). Default: the catalog's newest pretrained backbone, else "
        "assets/bootstrap-backbone.",
    ),
]
CopyCheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--copy-checkpoint",
        help="Copy-detection descriptor for near-duplicates and eval leaks (dinoflow SSCD descriptor or SSCD TorchScript "
        "file; local path). Default: assets/copy-descriptor.",
    ),
]
EvalSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--eval-set",
        help="NAME=PATH of a benchmark (ImageFolder directory or a tar of one) whose copies are removed from "
        "the pool as eval_leak (repeatable).",
    ),
]


@contextmanager
def user_errors() -> Iterator[None]:
    """A config mistake is one line on stderr and exit code 2, never a traceback."""
    from data_catalog.settings import ConfigError

    try:
        yield
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def curate(
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Folder, fsspec URL, tar shards, or a parquet/CSV list (overrides 'source:' of --config).",
        ),
    ] = None,
    catalog: CatalogFlag = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="Use an existing Dask cluster.")
    ] = None,
    embed_checkpoint: EmbedCheckpointOpt = None,
    copy_checkpoint: CopyCheckpointOpt = None,
    eval_set: EvalSetOpt = None,
) -> None:
    """Curate images into the catalog and a dataset version: ingest, quality filters, embed, hash and
    semantic dedup, eval-leak removal, hierarchical k-means, balanced sampling (Prefect ephemeral mode)."""
    from flows.cli_curate import curate_flags, preflight
    from flows.settings import pipeline_config

    with user_errors():
        flags = curate_flags(embed_checkpoint, copy_checkpoint, eval_set)
        cfg = pipeline_config(
            config, overrides, require_source=True, catalog=catalog, source=source,
            dask_address=dask_address, **flags,
        )  # fmt: skip
        preflight(cfg)
        from flows.curate import curate as curate_flow
        from flows.report import print_summary

        print_summary(curate_flow(cfg))


@app.command()
def run(
    catalog: CatalogFlag = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Images to ingest (overrides 'source:' of --config; omit both to use the catalog as is).",
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    embed_checkpoint: EmbedCheckpointOpt = None,
    copy_checkpoint: CopyCheckpointOpt = None,
    eval_set: EvalSetOpt = None,
) -> None:
    """Run the whole ``curate-and-pretrain`` flow locally (Prefect ephemeral mode)."""
    from flows.cli_curate import curate_flags, preflight
    from flows.settings import pipeline_config

    with user_errors():
        flags = curate_flags(embed_checkpoint, copy_checkpoint, eval_set)
        cfg = pipeline_config(config, overrides, catalog=catalog, source=source, **flags)
        preflight(cfg)
        from flows.pipeline import curate_and_pretrain
        from flows.report import print_summary

        print_summary(curate_and_pretrain(cfg))


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo pool and catalog go.")] = Path(
        ".dinoflow-demo"
    ),
    photos: Annotated[
        Path | None, typer.Option(help="Folder of real photos (default: ../shared/data/raw-photos).")
    ] = None,
    pretrain: Annotated[bool, typer.Option(help="Also pretrain the demo model on 2 CPU cores.")] = True,
) -> None:
    """Build a demo pool from real photos (plus copies, edits, broken files) and run the pipeline on it."""
    from flows.demo import run_demo

    run_demo(workdir, photos, pretrain=pretrain)


@app.command()
def serve(
    config: Annotated[
        Path, typer.Option("--config", help="YAML file with the pipeline settings (catalog, source, ...).")
    ],
    overrides: SetOpt = None,
    cron: Annotated[str, typer.Option(help="Cron schedule.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="IANA timezone of the schedule.")] = "UTC",
    gpu_slots: Annotated[
        int | None,
        typer.Option(min=1, help="Create or resize the global limit dinoflow-gpu (slots = torchrun ranks)."),
    ] = None,
) -> None:
    """Serve ``curate-and-pretrain/nightly`` and the ``curate``, ``pretrain``, ``evaluate`` deployments
    (needs ``prefect server start``)."""
    from flows.settings import pipeline_config

    with user_errors():
        cfg = pipeline_config(config, overrides)
        from flows.deploy import serve_nightly

        serve_nightly(cfg, cron=cron, timezone=timezone, gpu_slots=gpu_slots)


@app.command("bootstrap-backbone")
def bootstrap_backbone(
    data: Annotated[
        Path, typer.Option(help="The shared data folder (CIFAR-10, Imagenette archives).")
    ] = Path("../shared/data"),
    out: Annotated[Path, typer.Option(help="Where the fp16 backbone and metrics go.")] = Path(
        "assets/bootstrap-backbone"
    ),
    workdir: Annotated[Path, typer.Option(help="Catalog, extracted images and the run.")] = Path(
        ".dinoflow-bootstrap"
    ),
    steps: Annotated[int, typer.Option(help="Training steps (batch 32, demo preset).")] = 1200,
    overrides: SetOpt = None,
) -> None:
    """Reproduce the shipped bootstrap backbone and its CIFAR-10 kNN numbers (CPU, under an hour)."""
    from flows.bootstrap import build_bootstrap

    with user_errors():
        record = build_bootstrap(data, workdir, out, steps, overrides=overrides or [])
    typer.echo(json.dumps(record["knn_cifar10_test"], indent=2))


@catalog_app.command("stats")
def catalog_stats(
    catalog: CatalogOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Counts per status and reason in the images table, and the table versions."""
    from data_catalog.catalog import Catalog
    from flows.report import catalog_summary, print_catalog_summary

    summary = catalog_summary(Catalog(catalog))
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_catalog_summary(summary)


@catalog_app.command("export")
def catalog_export(
    table: Annotated[
        str,
        typer.Argument(help="Table to export: images, datasets, runs, evaluations, embeddings or clusters."),
    ],
    catalog: CatalogOpt,
    out: Annotated[Path, typer.Option("--out", help="Output file: .parquet or .csv.")],
    version: Annotated[int | None, typer.Option(help="Table version (default: newest).")] = None,
) -> None:
    """Export a catalog table to parquet or CSV."""
    from data_catalog.catalog import Catalog
    from data_catalog.export import READERS, export_table

    catalog_ = Catalog(catalog)
    if table not in READERS:
        typer.echo(f"error: unknown table {table!r}; valid tables: {', '.join(sorted(READERS))}", err=True)
        raise typer.Exit(2)
    if catalog_.version(table) is None:
        typer.echo(f"error: catalog {catalog_.root} has no {table} table yet", err=True)
        raise typer.Exit(2)
    try:
        rows = export_table(catalog_, table, out, version=version)
    except ValueError as exc:  # a bad extension or version: one line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {rows} rows of {table} to {out}")


app.command("evaluate")(evaluate_command)
app.add_typer(model_app, name="model")
app.add_typer(dataset_app, name="dataset")


def main() -> None:
    """Console entry point. For ephemeral Prefect runs: no telemetry, and a startup timeout that a
    loaded machine meets (Prefect's 20 s default is not, on a fresh home); a user's setting wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows import lifecycle

    lifecycle.run(app)  # SIGTERM/SIGINT/SIGHUP stop every child process (flows/lifecycle.py)
