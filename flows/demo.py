"""``make demo``: a pool of real photos plus planted copies, edits and broken files, through the DAG."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from curation.demo_data import build_demo_pool
from flows.config import PipelineConfig, PretrainStageConfig
from flows.report import print_summary

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "raw-photos" / "images"


def demo_config(workdir: Path, pretrain: bool) -> PipelineConfig:
    return PipelineConfig(
        catalog=str(workdir / "catalog"),
        source=str(workdir / "pool"),
        pretrain=PretrainStageConfig(enabled=pretrain, preset="demo", nproc_per_node=1),
    )


def planted_vs_found(planted: dict[str, int], counts: list[dict[str, object]]) -> Table:
    """What the demo planted next to what the catalog found (they match when the pipeline works)."""

    def found(status: str, reason: str | None = None) -> int:
        return sum(
            int(str(r["count"]))
            for r in counts
            if r["status"] == status and (reason is None or r["reason"] == reason)
        )

    table = Table(title="planted vs found")
    for col in ("kind", "planted", "found"):
        table.add_column(col, justify="right" if col != "kind" else "left")
    table.add_row("exact copies", str(planted["exact_copies"]), str(found("duplicate", "exact_duplicate")))
    table.add_row(
        "edited near-duplicates",
        str(planted["near_duplicates"]),
        str(found("duplicate", "near_duplicate_phash") + found("duplicate", "near_duplicate_embedding")),
    )
    table.add_row("broken / unusable files", str(planted["broken"]), str(found("rejected")))
    return table


def run_demo(workdir: Path, photos: Path | None, pretrain: bool = True) -> dict[str, object]:
    from flows.pipeline import curate_and_pretrain

    console = Console()
    workdir = workdir.resolve()
    photos = photos if photos is not None else (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None)
    pool = workdir / "pool"
    if not pool.exists():
        planted = build_demo_pool(pool, photos)
        (workdir / "planted.json").write_text(json.dumps(planted, indent=2))
    planted = json.loads((workdir / "planted.json").read_text())
    console.print(f"demo pool: {pool} (planted: {planted})")
    result = curate_and_pretrain(demo_config(workdir, pretrain))
    print_summary(result, console)
    console.print(planted_vs_found(planted, result.get("counts", [])))
    console.print(f"catalog: {workdir / 'catalog'}  (dinoflow catalog stats --catalog {workdir / 'catalog'})")
    return result
