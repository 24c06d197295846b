"""Summaries printed by the CLI: counts per status and reason, where the catalog and reports are."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from data_catalog.catalog import Catalog
from data_catalog.images import TABLE as IMAGES
from data_catalog.images import status_counts


def catalog_summary(catalog: Catalog) -> dict[str, Any]:
    counts = status_counts(catalog)
    tables = {}
    for name in ("images", "datasets", "runs"):
        tables[name] = catalog.version(name)
    return {
        "catalog": catalog.root,
        "images_table": catalog.table_uri(IMAGES),
        "table_versions": tables,
        "total": sum(int(str(r["count"])) for r in counts),
        "counts": counts,
    }


def counts_table(counts: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("status")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for row in counts:
        table.add_row(str(row["status"]), str(row["reason"] or "-"), str(row["count"]))
    table.add_row("[bold]total[/bold]", "", f"[bold]{sum(int(r['count']) for r in counts)}[/bold]")
    return table


def print_catalog_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(counts_table(summary["counts"], f"images in {summary['catalog']}"))
    versions = ", ".join(f"{k} v{v}" for k, v in summary["table_versions"].items() if v is not None)
    console.print(f"table versions: {versions or 'none yet'}")


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    """Print what a flow run returned: counts, and where the catalog, dataset, run and report are."""
    console = console or Console()
    if "counts" in result:
        console.print(counts_table(result["counts"], "images by status and reason"))
    for key in ("catalog", "images_version", "dataset", "run_dir", "report"):
        if result.get(key) is not None:
            console.print(f"{key:>15}: {result[key]}")
