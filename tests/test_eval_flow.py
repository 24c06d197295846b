"""The ``evaluate`` flow under a real Prefect API (ephemeral): metrics JSON, PNGs, artifacts with the
pictures embedded, the evaluations table with the change against the previous evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_catalog.catalog import Catalog
from data_catalog.evaluations import read_evaluations
from tests.test_eval_data import make_image_folder
from tests.test_eval_evaluate import pico_checkpoint, small_config

pytestmark = pytest.mark.prefect


def _artifacts() -> list:  # type: ignore[type-arg]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_artifacts()


def test_evaluate_flow_records_reports_and_artifacts(prefect_harness: None, tmp_path: Path) -> None:
    from evaluation.config import BenchmarkConfig
    from flows.evaluate import evaluate

    train = make_image_folder(tmp_path / "train", 3, 8)
    test = make_image_folder(tmp_path / "test", 3, 4, seed=1)
    bench = BenchmarkConfig.model_validate(
        {
            "train": str(train),
            "test": str(test),
            "transform": {"policy": "squash", "resize": 32, "crop": None},
        }
    )
    cfg = small_config(tmp_path, report={"projection": "pca"})
    catalog = str(tmp_path / "catalog")
    ck = pico_checkpoint(tmp_path / "ck.safetensors", seed=5)
    first = evaluate(str(ck), "tiny", cfg, catalog=catalog, benchmark_config=bench)
    out = Path(first["report_dir"])
    assert out.parent == Path(catalog) / "runs"
    assert {"knn", "linear", "retrieval", "random_init", "raw_pixels"} <= set(first)
    assert json.loads((out / "metrics.json").read_text())["linear"] == first["linear"]
    assert {p.name for p in out.glob("*.png")} >= {"confusion.png", "baselines.png", "patch_pca.png"}
    assert "![baselines](baselines.png)" in (out / "report.md").read_text()
    markdown = [a for a in _artifacts() if a.type == "markdown" and a.key.startswith("eval-tiny")]
    assert markdown and markdown[0].data.count("data:image/png;base64,") == 6
    tables = [a for a in _artifacts() if a.type == "table" and a.key.startswith("eval-tiny")]
    assert tables

    pico_checkpoint(ck, seed=6)  # a new checkpoint at the same path: new features, compared with the last
    second = evaluate(str(ck), "tiny", cfg, catalog=catalog, benchmark_config=bench)
    rows = read_evaluations(Catalog(catalog)).to_pylist()
    assert len({r["eval_id"] for r in rows}) == 2
    mine = [r for r in rows if r["eval_id"] == second["eval_id"] and r["subject"] == "checkpoint"]
    assert all(r["previous_eval_id"] == first["eval_id"] for r in mine)
    assert second["checkpoint"]["sha256"] != first["checkpoint"]["sha256"]


def test_cli_adhoc_sets_write_the_metrics_json(prefect_harness: None, tmp_path: Path) -> None:
    from flows.cli import app

    train = make_image_folder(tmp_path / "train", 2, 6)
    test = make_image_folder(tmp_path / "test", 2, 3, seed=2)
    ck = pico_checkpoint(tmp_path / "ck.safetensors")
    args = ["evaluate", "--checkpoint", str(ck), "--train", str(train), "--test", str(test), "--out",
            str(tmp_path / "metrics.json"), "--resize", "32", "--crop", "0", "--policy", "squash",
            "--report-dir", str(tmp_path / "report"), "--set", f"evaluate.cache_dir={tmp_path / 'cache'}",
            "--set", "evaluate.linear.c_steps=3", "--set", "evaluate.report.projection=pca"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert {"knn", "linear", "retrieval", "random_init", "raw_pixels", "summary"} <= set(doc)
    assert doc["benchmark"]["n_train"] == 12 and doc["benchmark"]["n_test"] == 6
    assert (tmp_path / "report" / "confusion.png").is_file()
    assert "| linear |" in result.output


def _tiny_eval(tmp_path: Path, size: int = 32) -> dict:  # type: ignore[type-arg]
    train = make_image_folder(tmp_path / "bench-train", 2, 6)
    test = make_image_folder(tmp_path / "bench-test", 2, 3, seed=3)
    tiny = {
        "train": str(train),
        "test": str(test),
        "transform": {"policy": "squash", "resize": size, "crop": None},
    }
    return {"enabled": True, "run_benchmarks": ["tiny"], "benchmarks": {"tiny": tiny},
            "cache_dir": str(tmp_path / "cache"), "linear": {"c_steps": 3}, "report": {"projection": "pca"},
            "copy_detection": {"max_photos": 2, "edits": ["exact", "hflip"]}}  # fmt: skip


def test_a_pretraining_run_is_evaluated_under_its_run_id(prefect_harness: None, tmp_path: Path) -> None:
    from evaluation.config import EvalConfig
    from flows.evaluate import evaluate_run

    run_dir = tmp_path / "runs" / "nette-v1-demo"
    pico_checkpoint(run_dir / "teacher_backbone.safetensors")
    start = pico_checkpoint(tmp_path / "start.safetensors", seed=5)  # the run continued from these weights
    (run_dir / "config.yaml").write_text(f"model:\n  init_backbone: {start}\n")
    cfg = EvalConfig.model_validate(_tiny_eval(tmp_path))
    [summary] = evaluate_run(str(tmp_path / "catalog"), str(run_dir), cfg)
    assert summary["benchmark"] == "tiny" and "checkpoint" in summary["summary"]
    assert "start_checkpoint" in summary["summary"]  # the baseline a continued run is judged against
    rows = read_evaluations(Catalog(str(tmp_path / "catalog"))).to_pylist()
    assert rows and {r["run_id"] for r in rows} == {"nette-v1-demo"}
    assert {r["subject"] for r in rows} >= {"checkpoint", "start_checkpoint", "random_init", "raw_pixels"}


def test_pipeline_checks_its_benchmarks_before_any_work(tmp_path: Path) -> None:
    from data_catalog.settings import ConfigError
    from evaluation.config import EvalConfig
    from flows.evaluate import check_run_benchmarks

    cfg = EvalConfig.model_validate({**_tiny_eval(tmp_path), "run_benchmarks": ["tiny", "mine"],
                                     "benchmarks": {**_tiny_eval(tmp_path)["benchmarks"], "mine": {"train": "/nowhere", "holdout_fraction": 0.1}}})  # fmt: skip
    with pytest.raises(ConfigError, match="benchmark 'mine' needs /nowhere, not found"):
        check_run_benchmarks(cfg)


@pytest.mark.slow
def test_curate_and_pretrain_ends_with_the_evaluate_subflow(
    prefect_harness: None, imagenette_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from flows.config import PipelineConfig
    from flows.pipeline import curate_and_pretrain

    source = tmp_path / "pool"
    for cls in sorted(p for p in imagenette_dir.iterdir() if p.is_dir())[:2]:
        (source / cls.name).mkdir(parents=True)
        for img in sorted(cls.iterdir())[:12]:
            shutil.copy(img, source / cls.name / img.name)
    cfg = PipelineConfig.model_validate({
        "catalog": str(tmp_path / "catalog"), "source": str(source), "dask_address": "sync",
        "dataset": {"name": "nette"},
        "curate": {"embed": {"enabled": False}},  # the semantic stages have their own pipeline test
        "pretrain": {"enabled": True, "preset": "demo", "max_steps": 2, "nproc_per_node": 1,
                     "train": {"train": {"batch_size_per_device": 8, "num_workers": 0}}},
        "evaluate": _tiny_eval(tmp_path, size=64),
    })  # fmt: skip
    result = curate_and_pretrain(cfg)
    [evaluation] = result["evaluations"]
    assert evaluation["benchmark"] == "tiny" and Path(evaluation["report_dir"], "metrics.json").is_file()
    rows = read_evaluations(Catalog(cfg.catalog)).to_pylist()
    assert {r["run_id"] for r in rows} == {Path(result["run_dir"]).name}
