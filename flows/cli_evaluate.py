"""``dinoflow evaluate``: a checkpoint and its baselines on a named benchmark or an ad-hoc labelled set.

    dinoflow evaluate --checkpoint PATH_OR_RUN --benchmark NAME [--config FILE] [--catalog C]
    dinoflow evaluate --checkpoint CK --train DIR_OR_TAR --test DIR_OR_TAR --out metrics.json

Settings are the ``evaluate:`` section of the pipeline config (``--config FILE``, ``--set
evaluate.linear.c_steps=11``). Before any work, the checkpoint is loaded strictly and the benchmark
listed, so a mismatched checkpoint, an empty split or a test class the train split lacks is one line
on stderr (exit 1; a config mistake: exit 2), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Pipeline YAML; its 'evaluate:' section is used.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting, e.g. --set evaluate.knn.ks=[10,20].")
]


def load_settings(
    config: Path | None, overrides: list[str] | None, catalog: str | None
) -> tuple[Any, str | None]:
    """``(EvalConfig, catalog)`` from the pipeline YAML, ``--set`` and ``--catalog`` (which wins)."""
    from data_catalog.settings import apply_overrides, read_yaml, validate
    from flows.config import PipelineConfig

    tree = read_yaml(config) if config is not None else {}
    tree = apply_overrides(PipelineConfig, tree, list(overrides or []))
    cfg = validate(
        PipelineConfig, {**tree, "catalog": tree.get("catalog") or ""}, f"config {config}" if config else None
    )
    return cfg.evaluate, catalog or tree.get("catalog")


def adhoc_benchmark(train: str, test: str, resize: int | None, crop: int | None, policy: str | None) -> Any:
    from data_catalog.settings import validate
    from evaluation.config import BenchmarkConfig

    transform: dict[str, Any] = {
        k: v for k, v in {"resize": resize, "policy": policy}.items() if v is not None
    }
    if crop is not None:
        transform["crop"] = crop or None  # 0: no crop
    return validate(BenchmarkConfig, {"train": train, "test": test, "transform": transform}, "--train/--test")


def choose_benchmark(cfg: Any, benchmark: str | None, train: str | None, test: str | None,
                     resize: int | None, crop: int | None, policy: str | None) -> tuple[str, Any]:  # fmt: skip
    """``(name, BenchmarkConfig)``: a registered name, or the ad-hoc ``--train``/``--test`` pair."""
    from data_catalog.settings import ConfigError

    if (benchmark is None) == (train is None and test is None):
        raise ConfigError("pass either --benchmark NAME or both --train and --test")
    if benchmark is not None:
        return benchmark, cfg.benchmark(benchmark)
    if train is None or test is None:
        raise ConfigError(
            "an ad-hoc benchmark needs both --train and --test (ImageFolder directories or tars)"
        )
    return "adhoc", adhoc_benchmark(train, test, resize, crop, policy)


def preflight(
    checkpoint: str, start: str | None, name: str, bench: Any, cfg: Any, catalog: str | None
) -> str:
    """Fail fast, in one line: the checkpoint loads strictly and the benchmark's splits are sound.
    Returns the checkpoint's path (a run id resolved through the catalog)."""
    from evaluation.checkpoints import resolve_checkpoint
    from evaluation.datasets import list_benchmark
    from pretrain.models.io import load_backbone

    path, _ = resolve_checkpoint(checkpoint, catalog)
    for ck in (path, start):
        if ck is not None:
            load_backbone(ck)
    list_benchmark(name, bench, cfg.cache_root())
    return path


def evaluate_command(
    checkpoint: Annotated[
        str,
        typer.Option("--checkpoint", help="Backbone file or folder (official .pth, ours, HF), or a run id."),
    ],
    benchmark: Annotated[
        str | None,
        typer.Option("--benchmark", help="A benchmark name: cifar10, cifar10-seed, imagenette, ..."),
    ] = None,
    train: Annotated[
        str | None, typer.Option("--train", help="Ad-hoc train split: ImageFolder dir or tar.")
    ] = None,
    test: Annotated[
        str | None, typer.Option("--test", help="Ad-hoc test split: ImageFolder dir or tar.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the metrics JSON here too.")] = None,
    catalog: Annotated[
        str | None,
        typer.Option("--catalog", help="Record in this catalog's evaluations table; resolve run ids."),
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Folder for PNGs, report.md.")
    ] = None,
    start_checkpoint: Annotated[
        str | None,
        typer.Option("--start-checkpoint", help="Also evaluate the checkpoint training started from."),
    ] = None,
    resize: Annotated[
        int | None, typer.Option("--resize", help="Ad-hoc sets: resize side (default 256).")
    ] = None,
    crop: Annotated[
        int | None, typer.Option("--crop", help="Ad-hoc sets: centre crop (default 224; 0: none).")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Ad-hoc sets: short_side | squash.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Evaluate a checkpoint: kNN, linear probe and retrieval, beside random-init and raw-pixel baselines."""
    from data_catalog.settings import ConfigError
    from flows.cli import user_errors

    with user_errors():
        cfg, catalog = load_settings(config, overrides, catalog)
        name, bench = choose_benchmark(cfg, benchmark, train, test, resize, crop, policy)
        try:
            preflight(checkpoint, start_checkpoint, name, bench, cfg, catalog)
        except ConfigError:
            raise
        except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    from flows.evaluate import evaluate

    doc = evaluate(
        checkpoint, name, cfg, catalog=catalog, out_dir=str(report_dir) if report_dir else None,
        benchmark_config=None if benchmark else bench, start_checkpoint=start_checkpoint,
    )  # fmt: skip
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2))
    print_result(doc, out)


def print_result(doc: dict[str, Any], out: Path | None) -> None:
    from rich.console import Console

    from evaluation.summary import headline_table

    console = Console()
    console.print(headline_table(doc))
    for warning in doc["benchmark"]["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    skipped = doc["benchmark"]["skipped"]
    if skipped["train"] or skipped["test"]:
        console.print(
            f"[yellow]skipped[/yellow] {skipped['train']} train, {skipped['test']} test images (undecodable)"
        )
    if doc.get("drops"):
        console.print(f"[red]dropped against the previous evaluation:[/red] {', '.join(doc['drops'])}")
    console.print(f"report: {doc['report_dir']}" + (f"\nmetrics: {out}" if out else ""))
