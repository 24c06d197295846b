"""``dinoflow dataset ...``: write, list and verify dataset versions (no Prefect: plain library calls)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

dataset_app = typer.Typer(
    help="Write, list and verify dataset versions (webdataset shards).", no_args_is_help=True
)

CatalogOpt = Annotated[str, typer.Option("--catalog", help="Catalog root: a folder or an fsspec URI.")]


@dataset_app.command("create")
def create(
    catalog: CatalogOpt,
    name: Annotated[str, typer.Option("--name", help="Dataset name; versions count 1, 2, ... per name.")],
    max_samples: Annotated[
        int | None,
        typer.Option("--max-samples", help="Uniform sample of at most N images (default: all accepted)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample and of the shard order.")] = 0,
    shard_max_bytes: Annotated[
        int, typer.Option("--shard-max-bytes", help="Target tar shard size in bytes.")
    ] = 1_000_000_000,
    shard_max_samples: Annotated[
        int | None, typer.Option("--shard-max-samples", help="At most N samples per shard.")
    ] = None,
    reencode_max_side: Annotated[
        int | None,
        typer.Option(
            "--reencode-max-side",
            help="Re-encode images with a longer side above this, to it (JPEG sources as JPEG, others as PNG).",
        ),
    ] = None,
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", help="Quality of re-encoded JPEGs.")] = 90,
    parents: Annotated[
        list[str] | None, typer.Option("--parent", help="Parent dataset NAME:vN (repeatable).")
    ] = None,
    skip_errors: Annotated[
        bool,
        typer.Option(
            "--skip-errors", help="Leave out unreadable images (listed in the index) instead of failing."
        ),
    ] = False,
) -> None:
    """Write the catalog's accepted images as a new, immutable dataset version."""
    from curation.dataset_version import create_dataset_version
    from data_catalog.catalog import Catalog
    from flows.settings import curation_record

    console = Console()
    cat = Catalog(catalog)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"writing {name}", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        record = create_dataset_version(
            cat,
            name,
            max_samples=max_samples,
            seed=seed,
            shard_max_bytes=shard_max_bytes,
            shard_max_samples=shard_max_samples,
            reencode_max_side=reencode_max_side,
            jpeg_quality=jpeg_quality,
            parents=parents or [],
            errors="skip" if skip_errors else "raise",
            curation=curation_record(cat),
            progress=on_progress,
        )
    console.print(
        f"dataset [bold]{record.ref}[/bold]: {record.num_samples} samples in {record.num_shards} shards "
        f"({record.total_bytes / 1e6:.1f} MB)\n  shards: {record.shards_uri}/{record.shard_pattern}\n"
        f"  index:  {record.index_uri}"
    )


@dataset_app.command("list")
def list_(
    catalog: CatalogOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the dataset versions of a catalog."""
    from data_catalog.catalog import Catalog
    from data_catalog.datasets import read_datasets

    rows = read_datasets(Catalog(catalog)).to_pylist()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"datasets in {catalog}")
    for col in ("dataset", "samples", "shards", "MB", "images v", "parents", "created"):
        table.add_column(col, justify="right" if col in ("samples", "shards", "MB", "images v") else "left")
    for r in rows:
        table.add_row(
            r["dataset_id"],
            str(r["num_samples"]),
            str(r["num_shards"]),
            f"{(r['total_bytes'] or 0) / 1e6:.1f}",
            str(r["images_table_version"]),
            ", ".join(r["parents"] or []) or "-",
            str(r["created_at"])[:19],
        )
    Console().print(table if rows else "no dataset versions yet (dinoflow dataset create ...)")


@dataset_app.command("verify")
def verify(
    catalog: CatalogOpt,
    dataset: Annotated[str, typer.Argument(help="NAME or NAME:vN (default: the newest version).")],
) -> None:
    """Re-read every shard of a version: md5, size and sample counts against its index."""
    from curation.shards import verify_dataset
    from data_catalog.catalog import Catalog
    from data_catalog.datasets import parse_dataset_ref

    name, version = parse_dataset_ref(dataset)
    report = verify_dataset(Catalog(catalog), name, version)
    for problem in report["problems"]:
        typer.echo(f"problem: {problem}", err=True)
    typer.echo(
        f"{report['dataset']}: {'ok' if report['ok'] else 'FAILED'} ({report['num_samples']} samples, {report['num_shards']} shards)"
    )
    if not report["ok"]:
        raise typer.Exit(1)


@dataset_app.command("show")
def show(
    catalog: CatalogOpt,
    dataset: Annotated[str, typer.Argument(help="NAME or NAME:vN (default: the newest version).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record as JSON.")] = False,
) -> None:
    """One dataset version: its shards, lineage and the config that chose its images (curation rules)."""
    import yaml

    from data_catalog.catalog import Catalog
    from data_catalog.datasets import get_dataset, parse_dataset_ref

    try:
        name, version = parse_dataset_ref(dataset)
        record = get_dataset(Catalog(catalog), name, version)
    except (KeyError, ValueError) as exc:
        typer.echo(f"error: {exc.args[0] if exc.args else exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({**record.to_row(), "config": record.config}, indent=2, default=str))
        return
    fields = ("num_samples", "num_shards", "total_bytes", "shards_uri", "index_uri", "images_table_version")
    lines = [f"dataset {record.ref}"] + [f"  {f}: {getattr(record, f)}" for f in fields]
    lines += [f"  parents: {', '.join(record.parents) or '-'}", f"  created_at: {record.created_at}"]
    config = record.config
    curation = config.pop("curation", None)
    lines.append("curation (the settings that decided which images the catalog accepts):")
    text = yaml.safe_dump(curation, sort_keys=False) if curation else "not recorded\n"
    lines += ["  " + ln for ln in text.splitlines()]
    lines.append("version settings (sampling, shards):")
    lines += ["  " + ln for ln in yaml.safe_dump(config, sort_keys=False).splitlines()]
    typer.echo("\n".join(lines))
