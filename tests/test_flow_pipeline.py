"""The whole DAG under Prefect: ingest -> filter -> hash dedup -> dataset version -> pretrain (torchrun)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_catalog.catalog import Catalog
from tests.test_cli_curate import tiny_backbone, tiny_copy_descriptor

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_curate_and_pretrain_on_real_images(
    prefect_harness: None, imagenette_dir: Path, tmp_path: Path
) -> None:
    from data_catalog.datasets import get_dataset, read_datasets
    from data_catalog.runs import read_runs
    from flows.config import PipelineConfig
    from flows.pipeline import curate_and_pretrain
    from pretrain.config import load_config

    source = tmp_path / "pool"
    for cls in sorted(imagenette_dir.iterdir())[:4]:
        if cls.is_dir():
            dest = source / cls.name
            dest.mkdir(parents=True)
            for img in sorted(cls.iterdir())[:16]:
                shutil.copy(img, dest / img.name)
    cfg = PipelineConfig.model_validate(
        {
            "catalog": str(tmp_path / "catalog"),
            "source": str(source),
            "dask_address": "sync",
            "dataset": {"name": "nette", "shard_max_bytes": 200_000},
            "curate": {  # every curation stage, with tiny embedders
                "embed": {
                    "semantic_checkpoint": str(tiny_backbone(tmp_path / "bb.safetensors")),
                    "copy_checkpoint": str(tiny_copy_descriptor(tmp_path / "copy.pt")),
                },
                "cluster": {"n_clusters": [8, 2], "resampling_steps": [1], "sample_sizes": [2]},
            },
            "pretrain": {
                "enabled": True,
                "preset": "demo",
                "max_steps": 3,
                "nproc_per_node": 1,
                "train": {
                    "train": {"batch_size_per_device": 8, "num_workers": 0},
                    "optim": {"base_lr": 0.003},
                },
            },
        }
    )
    result = curate_and_pretrain(cfg)

    catalog = Catalog(cfg.catalog)
    assert result["dataset"] == "nette:v1"
    record = get_dataset(catalog, "nette", 1)
    accepted = sum(int(r["count"]) for r in result["counts"] if r["status"] == "accepted")
    assert record.num_samples == accepted and record.num_shards >= 2
    assert read_datasets(catalog).num_rows == 1
    # lineage: the version records the curation settings that chose its images
    assert record.config["curation"]["curate"] == cfg.curate.model_dump(mode="json")
    assert record.config["stage"]["name"] == "nette"
    assert record.config["stage"]["selection"]["rule"] == "balanced_hierarchical"
    assert result["cluster"]["pool"] == accepted

    run_dir = Path(result["run_dir"])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 or lines[-1]["step"] == 3
    assert (run_dir / "loss_curves.png").stat().st_size > 0
    # the trainer ran the training config the pipeline validated, from the file the flow wrote
    launched = load_config(run_dir / "launch_config.yaml")
    assert launched == cfg.pretrain.train == load_config(run_dir / "config.yaml")
    assert launched.optim.base_lr == 0.003 and launched.train.batch_size_per_device == 8
    runs = read_runs(catalog)
    assert runs.num_rows == 1 and runs.column("status").to_pylist() == ["completed"]
    assert runs.column("dataset").to_pylist()[0].startswith("nette")
