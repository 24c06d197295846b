"""``make demo``: a pool of real photos plus planted copies, edits and broken files, through the DAG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from curation.demo_data import build_demo_pool, planted_path
from flows.config import PipelineConfig
from flows.report import print_summary
from flows.run_report import planted_rows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "raw-photos" / "images"


# The demo's benchmark: 30 train and 10 held-out test images per class of the Imagenette subset at
# 64 px (the demo model's crop size), so the checkpoint and its baselines are evaluated in seconds.
DEMO_BENCHMARK = "imagenette-demo"
DEMO_SAMPLE = 400
DEMO_BENCHMARK_CONFIG = {
    "train": "${shared}/imagenette-train-subset.tar.gz",
    "holdout_fraction": 0.2,
    "train_per_class": 30,
    "test_per_class": 10,
    "transform": {"policy": "squash", "resize": 64, "crop": None},
    "description": "Imagenette subset at 64 px, 30 train / 10 test images per class (the demo)",
}


def demo_eval_source() -> Path | None:
    """The demo benchmark's images (a tar), when present: evaluated on, and decontaminated against."""
    from evaluation.config import expand_path

    path = Path(expand_path(str(DEMO_BENCHMARK_CONFIG["train"])))
    return path if path.is_file() else None


def demo_evaluate(workdir: Path) -> dict[str, object]:
    """The demo's evaluation stage: on when the benchmark's images exist (else off, said by the caller)."""
    return {
        "enabled": demo_eval_source() is not None,
        "run_benchmarks": [DEMO_BENCHMARK],
        "benchmarks": {DEMO_BENCHMARK: DEMO_BENCHMARK_CONFIG},
        "cache_dir": str(workdir / "eval-cache"),
        "copy_detection": {"max_photos": 20},
    }


def demo_config(workdir: Path, pretrain: bool) -> PipelineConfig:
    """A balanced sample of the curated pool (copies of the benchmark's images removed first), the demo
    preset with its high-resolution phase (20 steps at 128 px), evaluated on a small benchmark."""
    bench = demo_eval_source()
    leaks = {"eval_sets": {DEMO_BENCHMARK: str(bench)}} if bench is not None else {}
    return PipelineConfig.model_validate(
        {
            "catalog": str(workdir / "catalog"),
            "source": str(workdir / "pool"),
            # rebalanced: 400 of the ~500 accepted photos, fewest from the largest clusters
            "curate": {"sample": {"target_size": DEMO_SAMPLE}, "leaks": leaks},
            "pretrain": {
                "enabled": pretrain,
                "preset": "demo",
                "nproc_per_node": 1,
                "train": {"highres": {"enabled": True}},
            },
            "evaluate": demo_evaluate(workdir),
        }
    )


def planted_vs_found(planted: dict[str, int], counts: list[dict[str, object]]) -> Table:
    """What the demo planted next to what the catalog found (they match when the pipeline works)."""
    table = Table(title="planted vs found")
    for col in ("kind", "planted", "found"):
        table.add_column(col, justify="right" if col != "kind" else "left")
    for row in planted_rows(planted, counts):
        table.add_row(str(row["kind"]), str(row["planted"]), str(row["found"]))
    return table


def run_demo(workdir: Path, photos: Path | None, pretrain: bool = True) -> dict[str, object]:
    from flows.pipeline import curate_and_pretrain

    console = Console()
    workdir = workdir.resolve()
    photos = photos if photos is not None else (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None)
    pool = workdir / "pool"
    if not pool.exists():
        planted = build_demo_pool(pool, photos, eval_source=demo_eval_source())
        planted_path(pool).write_text(json.dumps(planted, indent=2))
    planted = json.loads(planted_path(pool).read_text())
    console.print(f"demo pool: {pool} (planted: {planted})")
    config = demo_config(workdir, pretrain)
    if not config.evaluate.enabled:
        console.print(
            f"evaluation skipped: {DEMO_BENCHMARK_CONFIG['train']} not found (DINOFLOW_SHARED_DATA)"
        )
    result = curate_and_pretrain(config)
    print_summary({k: v for k, v in result.items() if k != "report"}, console)
    console.print(planted_vs_found(planted, result.get("counts", [])))
    console.print(f"catalog: {workdir / 'catalog'}  (dinoflow catalog stats --catalog {workdir / 'catalog'})")
    logging.getLogger("prefect").setLevel(logging.WARNING)  # the temporary API's "stopping" line at exit
    if result.get("report"):
        console.print(f"report: {result['report']}", soft_wrap=True)  # the last line: open it in a browser
    return result
