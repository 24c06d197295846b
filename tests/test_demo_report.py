"""The report at the end of ``curate-and-pretrain`` (flows/run_report.py), from a tiny real run: a demo
pool with planted copies and broken files, every curation stage, a few pretraining steps, an evaluation."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.test_cli_curate import tiny_backbone, tiny_copy_descriptor
from tests.test_eval_data import make_image_folder

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def _tiny_run(imagenette_dir: Path, tmp_path: Path) -> tuple[dict, dict, Path]:  # type: ignore[type-arg]
    from curation.demo_data import build_demo_pool, planted_path
    from flows.config import PipelineConfig
    from flows.pipeline import curate_and_pretrain

    photos = sorted(p for p in imagenette_dir.iterdir() if p.is_dir())[0]
    pool = tmp_path / "pool"
    planted = build_demo_pool(pool, photos, max_photos=24, n_exact=3, n_near=3)
    planted_path(pool).write_text(json.dumps(planted))
    bench = {"train": str(make_image_folder(tmp_path / "b-train", 2, 6)),
             "test": str(make_image_folder(tmp_path / "b-test", 2, 3, seed=3)),
             "transform": {"policy": "squash", "resize": 64, "crop": None}}  # fmt: skip
    cfg = PipelineConfig.model_validate({
        "catalog": str(tmp_path / "catalog"), "source": str(pool), "dask_address": "sync",
        "curate": {"embed": {"semantic_checkpoint": str(tiny_backbone(tmp_path / "bb.safetensors")),
                             "copy_checkpoint": str(tiny_copy_descriptor(tmp_path / "copy.pt"))},
                   "cluster": {"n_clusters": [4, 2], "resampling_steps": [1], "sample_sizes": [2]}},
        "pretrain": {"enabled": True, "preset": "demo", "max_steps": 2, "nproc_per_node": 1,
                     "train": {"train": {"batch_size_per_device": 8, "num_workers": 0}}},
        "evaluate": {"enabled": True, "run_benchmarks": ["tiny"], "benchmarks": {"tiny": bench},
                     "cache_dir": str(tmp_path / "cache"), "linear": {"c_steps": 3},
                     "report": {"projection": "pca"}, "copy_detection": {"enabled": False}},
    })  # fmt: skip
    return curate_and_pretrain(cfg), planted, pool


def test_a_run_ends_with_a_report_of_its_stages_and_pictures(
    prefect_harness: None, imagenette_dir: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    from flows.artifacts import artifact_key
    from flows.run_report import planted_rows

    result, planted, pool = _tiny_run(imagenette_dir, tmp_path)
    report = Path(result["report"])
    assert report.name == "report.html" and report.parent == Path(result["run_dir"])
    page = report.read_text()
    # one self-contained page: the pictures embedded, each a PNG that opens
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) >= 3
    for uri in uris:
        Image.open(io.BytesIO(base64.b64decode(uri))).verify()
    # report.md beside it links the stages' own PNG files, relative to the report
    md = (report.parent / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    names = {Path(link).name for link in links}
    assert {"cluster-sizes.png", "loss_curves.png", "confusion.png", "baselines.png"} <= names
    for link in links:
        assert Image.open(report.parent / link).format == "PNG"
    # numbers: the catalog's counts and what the pool planted against what was found
    for row in planted_rows(planted, result["counts"]):
        assert f"| {row['kind']} | {row['planted']} | {row['found']} |" in md
    assert result["dataset"] in md and Path(result["run_dir"]).name in md
    assert result["evaluations"][0]["eval_id"] in md and "random_init" in md and "raw_pixels" in md
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert artifact_key(f"report-{report.parent.name}") in keys
